"""Hostile params.yaml (issue 20 item 7): a YAML alias bomb under `mask:` hung the stage, a
list nested 5,000 deep was a RecursionError traceback in every stage. Both are one line
naming the file and line, found before anything is built."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from recsys.errors import StageError
from recsys.params import MAX_DEPTH, read_params_file

ROOT = Path(__file__).resolve().parents[1]


def alias_bomb(levels: int = 9) -> str:
    lines = ["  a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, levels):
        refs = ", ".join([f"*a{i - 1}"] * 9)
        lines.append(f"  a{i}: &a{i} [{refs}]")
    return "mask:\n" + "\n".join(lines) + "\n"


def test_an_alias_bomb_is_refused_at_once(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(alias_bomb())
    start = time.monotonic()
    with pytest.raises(StageError, match=r"line 7: aliases expand to over 100,000 values"):
        read_params_file(path)
    assert time.monotonic() - start < 2


def test_deep_nesting_is_refused_without_recursion(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("mask:\n  x: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(StageError, match=f"line 2: nested deeper than {MAX_DEPTH} levels"):
        read_params_file(path)


def test_modest_aliases_and_nesting_still_load(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(
        "base: &base {factors: 8, alpha: 2.0}\nals:\n  <<: *base\n  iterations: 3\n"
        "deep: " + "[" * 20 + "1" + "]" * 20 + "\nrefs: [*base, *base]\n"
    )
    params = read_params_file(path)
    assert params["als"] == {"factors": 8, "alpha": 2.0, "iterations": 3}
    assert params["refs"][1]["factors"] == 8


@pytest.mark.parametrize("kind", ["bomb", "deep"])
def test_a_stage_on_hostile_params_is_one_line(tmp_path: Path, kind: str) -> None:
    work = tmp_path / "repo"
    work.mkdir()
    shutil.copy(ROOT / "params.yaml", work / "params.yaml")
    text = (work / "params.yaml").read_text()
    if kind == "bomb":
        text += alias_bomb().replace("mask:", "bomb:")
    else:
        text += "deep: " + "[" * 5000 + "]" * 5000 + "\n"
    (work / "params.yaml").write_text(text)
    proc = subprocess.run(
        [sys.executable, "-m", "stages.mask"],
        cwd=work,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith("error: params.yaml: line ") and proc.stderr.count("\n") == 1
