"""dvc.yaml cannot go stale: each stage's code deps are exactly the modules it imports, its
data deps and outs are exactly what it reads and writes, no output keeps a stage out of the
run-cache, and the user's event files are dependencies."""

from __future__ import annotations

import ast
import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.helpers import ROOT, make_repo_copy, run, set_params, tool_env

PACKAGES = ("stages", "recsys")
DVC_YAML = yaml.safe_load((ROOT / "dvc.yaml").read_text())
STAGES = DVC_YAML["stages"]


def module_file(module: str) -> Path | None:
    """The project file a dotted module name refers to, or None (a third-party module)."""
    if module.split(".")[0] not in PACKAGES:
        return None
    base = ROOT.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def import_closure(module: str) -> set[str]:
    """Project files `python -m module` loads: every import, at any depth, plus the parent
    packages' __init__ files (Python runs them first). Function-level imports count too."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        path = module_file(name)
        if path is None or str(path.relative_to(ROOT)) in seen:
            continue
        seen.add(str(path.relative_to(ROOT)))
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                todo += [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                todo.append(node.module)
                todo += [f"{node.module}.{alias.name}" for alias in node.names]
    return seen


def code_deps(stage: dict) -> set[str]:
    return {d for d in stage["deps"] if d.endswith(".py") and d.split("/")[0] in PACKAGES}


@pytest.mark.parametrize("name", list(STAGES))
def test_code_deps_are_exactly_the_import_closure(name: str) -> None:
    stage = STAGES[name]
    module = stage["cmd"].removeprefix("python -m ")
    assert module == f"stages.{name}", stage["cmd"]
    closure = import_closure(module)
    declared = code_deps(stage)
    assert not closure - declared, f"{name}: dvc.yaml misses {sorted(closure - declared)}"
    assert not declared - closure, f"{name}: dvc.yaml lists unused {sorted(declared - closure)}"


def files_under(root: Path) -> dict[str, str]:
    """Relative path -> md5 of every file under `root`, compiled bytecode left out."""
    return {
        str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


@pytest.mark.dvc
@pytest.mark.parametrize("name", list(STAGES))
def test_data_deps_and_outs_are_what_the_stage_reads_and_writes(
    name: str, reproduced_template: tuple[Path, str], tmp_path: Path
) -> None:
    """The stage's command, run in a folder holding only params.yaml and the deps `dvc repro`
    recorded for it, succeeds and writes exactly its declared outs, with the bytes `dvc
    repro` wrote: an undeclared input shows up as a failure, or (one the stage can do
    without) as different bytes; an undeclared output as an extra file."""
    template = reproduced_template[0]
    lock = yaml.safe_load((template / "dvc.lock").read_text())["stages"][name]
    work = tmp_path / name
    for path in [d["path"] for d in lock["deps"]] + ["params.yaml"]:
        source, target = template / path, work / path
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, target)
    before = files_under(work)
    proc = subprocess.run(
        lock["cmd"].split(), cwd=work, env=tool_env(), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, f"{name} with only its declared deps:\n{proc.stderr}"
    after = files_under(work)
    assert {p: h for p, h in before.items() if after.get(p) != h} == {}, f"{name} changed deps"
    written = {p: h for p, h in after.items() if p not in before}
    declared: dict[str, str] = {}
    for out in lock["outs"]:
        source = template / out["path"]
        if source.is_dir():
            declared |= {f"{out['path']}/{p}": h for p, h in files_under(source).items()}
        else:
            declared[out["path"]] = hashlib.md5(source.read_bytes()).hexdigest()
    assert written.keys() == declared.keys(), f"{name}: writes {sorted(written)}"
    assert written == declared, f"{name}: outputs differ from dvc repro's"


def test_closure_follows_function_level_and_package_imports(tmp_path: Path) -> None:
    """The checker itself: a module reached only through another one is found."""
    closure = import_closure("stages.evaluate")
    assert {"recsys/__init__.py", "stages/__init__.py", "recsys/metrics.py"} <= closure
    assert "recsys/shop.py" not in closure


def test_stage_modules_are_exactly_the_seven_stages() -> None:
    modules = {p.stem for p in (ROOT / "stages").glob("*.py")} - {"__init__"}
    assert modules == set(STAGES) == {
        "generate", "confidence", "matrix", "mask", "train", "evaluate", "export"
    }  # fmt: skip


def test_no_output_keeps_a_stage_out_of_the_run_cache() -> None:
    """DVC's run-cache skips a stage with a `persist` output, an always_changed stage, or one
    without deps or outs (`_can_hash` in dvc/stage/cache.py), and does not save a stage with
    a `cache: false` output that is neither a metric nor a plot (`Stage.run` in
    dvc/stage/__init__.py)."""
    for name, stage in STAGES.items():
        assert stage.get("deps") and (stage.get("outs") or stage.get("metrics")), name
        assert not stage.get("always_changed"), name
        for kind in ("outs", "metrics", "plots"):
            for out in stage.get(kind, []):
                if isinstance(out, dict):
                    (options,) = out.values()
                    assert not options.get("persist"), f"{name}: {out}"
                    if kind == "outs":
                        assert options.get("cache", True), f"{name}: {out} (declare as plot)"


def test_no_stage_declares_the_runtime_section() -> None:
    """Thread counts change speed, not outputs: declaring them would re-run stages."""
    for name, stage in STAGES.items():
        for param in stage.get("params", []):
            assert not str(param).startswith("runtime"), name


@pytest.mark.dvc
def test_editing_the_event_file_reruns_generate(tmp_path: Path) -> None:
    repo = make_repo_copy(tmp_path / "repo")
    (repo / "events/shop").mkdir(parents=True)
    log = repo / "events/shop/interactions.csv"
    log.write_text(
        "USER_ID,ITEM_ID,EVENT_TYPE,TIMESTAMP\n"
        + "".join(
            f"u{u},i{(u * 7 + j) % 13},View,{1_700_000_000 + u * 10 + j}\n"
            for u in range(40)
            for j in range(3)
        )  # fmt: skip
    )
    set_params(
        repo, {"generate": {"source": "files", "interactions_file": str(log.relative_to(repo))}}
    )
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "own events"], repo)
    run(["dvc", "repro", "generate"], repo)
    assert "up to date" in run(["dvc", "status", "generate"], repo).stdout
    with log.open("a") as fh:
        fh.write("u1,i5,View,1700009999\n")
    status = run(["dvc", "status", "generate"], repo).stdout
    assert "generate" in status and "modified" in status, status
    out = run(["dvc", "repro", "generate"], repo)
    assert "Running stage 'generate'" in out.stdout
    assert (repo / "data/interactions.csv").read_text().count("\n") == 40 * 3 + 1 + 1


@pytest.mark.dvc
def test_event_file_outside_events_is_refused(tmp_path: Path) -> None:
    repo = make_repo_copy(tmp_path / "repo")
    (repo / "logs").mkdir()
    (repo / "logs/interactions.csv").write_text("USER_ID,ITEM_ID,EVENT_TYPE,TIMESTAMP\n")
    set_params(
        repo, {"generate": {"source": "files", "interactions_file": "logs/interactions.csv"}}
    )
    proc = run(["dvc", "repro", "generate"], repo, check=False)
    assert proc.returncode != 0
    assert "generate.interactions_file = 'logs/interactions.csv'" in proc.stderr
    assert "inside events/" in proc.stderr
    assert "Traceback" not in proc.stderr
