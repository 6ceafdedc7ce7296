"""The champion/challenger gate (`recsys gate`): both bundles
scored on the same held-out pairs, a paired bootstrap verdict, GTO promotion by the rule.

Real bundles from real `dvc repro` runs (ALS at 3 and at 1 iteration, EASE, a smaller
shop), the real gto and dvc CLIs; `pytest -k gate` selects them all."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from recsys.bundle import load_bundle
from recsys.ids import load_ids
from recsys.io import load_csr
from tests.helpers import (
    RECSYS,
    ROOT,
    copy_reproduced,
    make_repo_copy,
    run,
    set_params,
    tool_env,
)

pytestmark = pytest.mark.dvc


def gate(
    repo: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`recsys gate ARGS` in `repo`, as a user runs it (in `env`, else the tests' own, which
    has a git identity: no ~/.gitconfig needed)."""
    return subprocess.run(
        [RECSYS, "gate", *args],
        cwd=repo,
        env={**(tool_env() if env is None else env), "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def bundles(reproduced_template: tuple[Path, str], tmp_path_factory) -> tuple[Path, dict]:
    """A reproduced copy and its bundles under several params (same split for all):
    name -> (bundle folder, that run's metrics.json)."""
    base = tmp_path_factory.mktemp("gate")
    repo = copy_reproduced(reproduced_template[0], base / "repo")
    out: dict[str, tuple[Path, dict]] = {}

    def keep(name: str) -> None:
        shutil.copytree(repo / "models/bundle", base / name)
        out[name] = (base / name, json.loads((repo / "metrics/metrics.json").read_text()))

    keep("als3")
    for name, params in (
        ("als1", {"als": {"iterations": 1}}),
        ("ease", {"model": {"type": "ease"}}),
    ):
        set_params(repo, params)
        run(["dvc", "repro"], repo)
        keep(name)
        run(["git", "checkout", "params.yaml"], repo)  # the split itself never changed
    return repo, out


def test_gate_worse_challenger_keeps_the_champion(bundles, tmp_path: Path) -> None:
    repo, b = bundles
    proc = gate(
        repo, "--champion", str(b["als3"][0]), "--challenger", str(b["als1"][0]),
        "--json", str(tmp_path / "v.json"), "--summary", str(tmp_path / "summary.md"),
    )  # fmt: skip
    assert proc.returncode == 3, proc.stderr
    verdict = json.loads((tmp_path / "v.json").read_text())
    assert not verdict["passed"] and not verdict["promoted"]
    for name in ("map_at_k", "ndcg_at_k"):
        m = verdict["metrics"][name]
        assert m["challenger"] < m["champion"] and m["ci_high"] < 0
        assert m["verdict"] == "significant"
    assert "kept the champion" in proc.stdout
    assert "MAP@10 champion" in proc.stdout and "NDCG@10 champion" in proc.stdout
    assert (tmp_path / "summary.md").read_text().startswith("## Champion/challenger gate: kept")


def test_gate_better_challenger_passes_and_scores_match_evaluate(bundles, tmp_path) -> None:
    """Swapped roles pass; each side's mean is what evaluate reports as `served` for that
    bundle: the gate scores with the project's one evaluation routine."""
    repo, b = bundles
    proc = gate(
        repo, "--champion", str(b["als1"][0]), "--challenger", str(b["als3"][0]),
        "--json", str(tmp_path / "v.json"),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    verdict = json.loads((tmp_path / "v.json").read_text())
    assert verdict["passed"] and verdict["decision"] == "would promote"
    assert verdict["version"] is None  # no --promote: nothing assigned
    for name in ("map_at_k", "ndcg_at_k"):
        m = verdict["metrics"][name]
        assert m["champion"] == pytest.approx(b["als1"][1]["served"][name], abs=1e-6)
        assert m["challenger"] == pytest.approx(b["als3"][1]["served"][name], abs=1e-6)
        assert m["ci_low"] > 0


def test_gate_across_families(bundles, tmp_path: Path) -> None:
    """An EASE champion against an ALS challenger: the decision follows the intervals."""
    repo, b = bundles
    proc = gate(
        repo, "--champion", str(b["ease"][0]), "--challenger", str(b["als3"][0]),
        "--json", str(tmp_path / "v.json"),
    )  # fmt: skip
    verdict = json.loads((tmp_path / "v.json").read_text())
    assert "(ease, bundle" in verdict["bundles"]["champion"]
    assert "(als, bundle" in verdict["bundles"]["challenger"]
    better = all(verdict["metrics"][m]["ci_low"] > 0 for m in ("map_at_k", "ndcg_at_k"))
    assert proc.returncode == (0 if better else 3)
    ease = verdict["metrics"]["map_at_k"]["champion"]
    assert ease == pytest.approx(b["ease"][1]["served"]["map_at_k"], abs=1e-6)


def test_gate_counts_items_the_champion_never_saw(bundles, tmp_path: Path) -> None:
    """A champion from a smaller shop lacks some items: their held-out pairs are misses for
    it, and the report counts exactly those pairs."""
    repo, _ = bundles
    small = make_repo_copy(
        tmp_path / "small",
        {
            "generate": {"users": 400, "interactions": 2000},
            "als": {"factors": 8, "iterations": 3},
            "evaluate": {"k": 10, "bootstrap_samples": 100},
            "export": {"top_n": 10, "fallback_size": 20},
            "runtime": {"threads": 1},
        },
    )
    run(["dvc", "repro", "export"], small)
    proc = gate(
        repo, "--champion", str(small / "models/bundle"), "--json", str(tmp_path / "v.json")
    )
    assert proc.returncode in (0, 3), proc.stderr
    verdict = json.loads((tmp_path / "v.json").read_text())
    champion_items = set(load_bundle(small / "models/bundle").item_ids.tolist())
    test = load_csr(repo / "data/test.npz")
    items = load_ids(repo / "data/item_ids.csv", "ITEM_ID")
    unseen = np.array([i not in champion_items for i in items[test.indices]])
    assert 0 < unseen.sum() < test.nnz
    assert verdict["unseen"]["champion"]["pairs"] == int(unseen.sum())
    assert verdict["unseen"]["champion"]["items"] == len(set(items[test.indices][unseen]))
    assert verdict["unseen"]["challenger"]["pairs"] == 0
    assert f"{int(unseen.sum()):,} held-out pairs are on" in proc.stdout


def test_gate_promotes_with_gto_then_keeps_an_equal_challenger(
    reproduced_copy: Path, tmp_path: Path
) -> None:
    """The registry path: no prod yet -> promoted (GTO tags HEAD); the same bundle again,
    fetched by `dvc artifacts get --stage prod`, is not better -> kept, prod unchanged."""
    repo = reproduced_copy
    storage = tmp_path / "storage"
    run(["dvc", "remote", "add", "-f", "-d", "local", str(storage)], repo)
    run(["git", "commit", "-qam", "local remote"], repo)
    run(["dvc", "push"], repo)
    # no git identity (none configured, none guessed from the host name): one line, no tag
    anonymous = {
        k: v for k, v in tool_env().items() if not k.startswith(("GIT_AUTHOR", "GIT_COMMITTER"))
    }
    anonymous |= {
        "HOME": str(tmp_path),
        "XDG_CONFIG_HOME": str(tmp_path),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_COUNT": "1",
        "GIT_CONFIG_KEY_0": "user.useConfigOnly",
        "GIT_CONFIG_VALUE_0": "true",
    }
    refused = gate(repo, "--promote", env=anonymous)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert refused.stderr == (
        "error: git has no identity for the registry's tags; expected git config user.name and "
        "user.email (or GIT_COMMITTER_NAME and GIT_COMMITTER_EMAIL)\n"
    )
    assert run(["git", "tag"], repo).stdout == ""
    first = gate(repo, "--promote")
    assert first.returncode == 0, first.stdout + first.stderr
    assert "no version in prod yet" in first.stdout and "promoted recsys-bundle@v" in first.stdout
    shown = run(["gto", "show", "recsys-bundle#prod", "--ref"], repo).stdout.strip()
    assert shown == "recsys-bundle@v0.0.1"
    second = gate(repo, "--promote", "--json", str(tmp_path / "v.json"))
    assert second.returncode == 3, second.stdout + second.stderr
    verdict = json.loads((tmp_path / "v.json").read_text())
    assert verdict["metrics"]["map_at_k"]["difference"] == 0
    assert "recsys-bundle@v0.0.1 (als" in verdict["bundles"]["champion"]
    assert run(["gto", "show", "recsys-bundle#prod", "--ref"], repo).stdout.strip() == shown


@pytest.mark.parametrize(
    ("setup", "args", "message"),
    [
        (lambda r: set_params(r, {"gate": {"rule": "maybe"}}), [], "gate.rule = 'maybe'"),
        (lambda r: set_params(r, {"gate": {"metrics": ["auc"]}}), [], "gate.metrics = ['auc']"),
        (lambda r: None, ["--champion", "nowhere"], "nowhere: no bundle directory"),
        (lambda r: None, ["--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_gate_errors_are_one_line_exit_2(reproduced_copy: Path, setup, args, message) -> None:
    setup(reproduced_copy)
    proc = gate(reproduced_copy, *args)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and message in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
