"""params.yaml is read the way DVC reads it (YAML 1.2) and validated before any work."""

from __future__ import annotations

from pathlib import Path

import pytest

from recsys.aggregation import EngineParams
from recsys.coldstart import ColdStartParams
from recsys.errors import StageError
from recsys.families import FAMILIES, load_model_params
from recsys.families.als import AlsParams
from recsys.gate import GateParams
from recsys.params import Section, load, read_params_file
from recsys.threads import RuntimeParams
from tests.helpers import ROOT, run

ALS = """als:
  factors: 8
  regularization: {reg}
  alpha: 40
  iterations: 3
  use_cg: true
  random_state: 42
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return path


def test_exponent_notation_is_a_number_as_in_dvc(tmp_path: Path) -> None:
    """YAML 1.1 (PyYAML) reads `1e-3` as a string; DVC and we read YAML 1.2: a float."""
    als = load(AlsParams.from_section, "als", write(tmp_path, ALS.format(reg="1e-3")))
    assert als.regularization == pytest.approx(0.001)


def test_yes_is_a_string_not_a_bool(tmp_path: Path) -> None:
    path = write(tmp_path, ALS.format(reg="0.01").replace("use_cg: true", "use_cg: yes"))
    with pytest.raises(StageError, match=r"^params.yaml: als.use_cg = 'yes'; expected true or"):
        load(AlsParams.from_section, "als", path)


def test_unquoted_date_is_refused_in_one_line(tmp_path: Path) -> None:
    path = write(tmp_path, "generate:\n  end_date: 2024-06-30\n")
    with pytest.raises(StageError) as err:
        Section.load("generate", path)
    message = str(err.value)
    assert "generate.end_date = 2024-06-30 is an unquoted date" in message
    assert '"2024-06-30"' in message and "\n" not in message


def test_duplicate_key_names_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, ALS.format(reg="0.01") + "als:\n  factors: 9\n")
    with pytest.raises(StageError, match=r"line 8: duplicate key"):
        read_params_file(path)


def test_syntax_error_names_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, "als:\n  factors: [8\n")
    with pytest.raises(StageError, match=r"params.yaml: line \d+: not valid YAML"):
        read_params_file(path)


def test_unknown_key_is_refused_before_any_work(tmp_path: Path) -> None:
    path = write(tmp_path, ALS.format(reg="0.01") + "  factor: 9\n")
    with pytest.raises(StageError, match=r"unknown param als.factor; known keys: alpha"):
        load(AlsParams.from_section, "als", path)


def test_threads_moved_to_runtime(tmp_path: Path) -> None:
    """`als.threads` changed no output, so it lives in `runtime:` (declared by no stage)."""
    path = write(tmp_path, ALS.format(reg="0.01") + "  threads: 2\nruntime:\n  threads: 2\n")
    with pytest.raises(StageError, match="unknown param als.threads"):
        load(AlsParams.from_section, "als", path)
    assert load(RuntimeParams.from_section, "runtime", path).threads == 2


def test_every_section_of_the_shipped_params_is_valid() -> None:
    params = read_params_file(ROOT / "params.yaml")
    assert set(params) == {
        "generate", "confidence", "engine", "mask", "model", "evaluate", "export", "coldstart",
        "runtime", "gate", *FAMILIES,
    }  # fmt: skip
    assert load(EngineParams.from_section, "engine", ROOT / "params.yaml").name == "duckdb"
    assert load_model_params(ROOT / "params.yaml").type == "als"  # the default family
    cold = load(ColdStartParams.from_section, "coldstart", ROOT / "params.yaml")
    assert cold.strategy == "attributes"  # chosen by measurement: docs/cold-start.md
    assert load(GateParams.from_section, "gate", ROOT / "params.yaml").stage == "prod"
    for name, family in FAMILIES.items():  # every family's section, not only the active one
        load(family.Params.from_section, name, ROOT / "params.yaml")


@pytest.mark.dvc
def test_dvc_and_the_stage_agree_on_exponent_notation(reproduced_copy: Path) -> None:
    """Through the real CLI: `dvc params diff` shows 0.001 and train accepts the value."""
    repo = reproduced_copy
    text = (
        (repo / "params.yaml").read_text().replace("regularization: 0.01", "regularization: 1e-3")
    )
    (repo / "params.yaml").write_text(text)
    diff = run(["dvc", "params", "diff", "--md"], repo).stdout
    assert "als.regularization" in diff and "0.001" in diff
    proc = run(["dvc", "repro", "train"], repo)
    assert "train:" in proc.stdout
