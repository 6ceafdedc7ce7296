"""CI gate: do the committed `dvc.lock` and `metrics/` match what `dvc repro` just gave?

    recsys check-repro [--rev HEAD] [--repo DIR]

Exit 0 when they are byte-identical; exit 2 when --rev is not a commit of the repository
(a gate that compared against nothing would pass anything). Otherwise exit 1 and say what
differs: which outputs (by their dvc.lock hashes), by how much for each metric, and whether
this machine's platform (CPU architecture, BLAS kernel, library versions) differs from the
one recorded in the committed bundle. Byte-identical results hold across x86-64 machines
with the same pinned BLAS kernel and library versions; elsewhere (say aarch64) small metric
differences are rounding, not a change of behaviour.
"""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path
from typing import Any

import yaml

from recsys.blas import describe
from recsys.commands import CommandParser
from recsys.errors import StageError
from recsys.paths import BUNDLE

WATCHED = ("dvc.lock", "metrics")


def git(root: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["git", *args], cwd=root, capture_output=True)


def repo_top(root: Path) -> Path:
    """The top of the git repository holding `root`, which must hold the pipeline."""
    if not root.is_dir():
        raise StageError(f"--repo {root}: no such directory")
    top = git(root, "rev-parse", "--show-toplevel")
    if top.returncode != 0:
        raise StageError(f"--repo {root}: not a git repository")
    path = Path(top.stdout.decode().strip())
    if not (path / "dvc.yaml").is_file():
        raise StageError(f"--repo {root}: no dvc.yaml at the top of the repository")
    return path


def resolve_rev(root: Path, rev: str) -> str:
    """The commit `rev` names, or a one-line error.

    Every git call below would otherwise fail quietly on a bad revision and the gate would
    compare the reproduction with nothing, and pass.
    """
    if not rev.strip() or rev.startswith("-"):
        raise StageError(f"--rev {rev!r}: expected a git revision such as HEAD")
    commit = git(root, "rev-parse", "--verify", "--quiet", "--end-of-options", f"{rev}^{{commit}}")
    if commit.returncode != 0:
        raise StageError(f"--rev {rev!r}: not a commit of this repository")
    return commit.stdout.decode().strip()


def committed(root: Path, rev: str, path: str) -> bytes | None:
    shown = git(root, "show", f"{rev}:{path}")
    return shown.stdout if shown.returncode == 0 else None


def changed_files(root: Path, rev: str) -> list[str]:
    """Watched files that differ from `rev`, are new, or are gone."""
    diff = git(root, "diff", "--name-only", rev, "--", *WATCHED)
    if diff.returncode != 0:
        raise StageError(f"git diff against {rev} failed: {diff.stderr.decode().strip()}")
    new = git(root, "ls-files", "--others", "--exclude-standard", "--", *WATCHED)
    return sorted(set(diff.stdout.decode().split()) | set(new.stdout.decode().split()))


def lock_outs(text: bytes | str | None) -> dict[str, str]:
    lock = yaml.safe_load(text) if text else None
    if not isinstance(lock, dict):
        return {}
    return {
        out["path"]: out.get("md5", "")
        for stage in (lock.get("stages") or {}).values()
        for out in stage.get("outs", [])
    }


def flatten(obj: Any, prefix: str = "") -> dict[str, float]:
    if isinstance(obj, dict):
        out: dict[str, float] = {}
        for key, value in obj.items():
            out |= flatten(value, f"{prefix}{key}.")
        return out
    if isinstance(obj, (int, float)) and not isinstance(obj, bool):
        return {prefix.rstrip("."): float(obj)}
    return {}


def metric_changes(old: bytes | None, new_path: Path) -> list[str]:
    try:
        before = flatten(json.loads(old)) if old else {}
        after = flatten(json.loads(new_path.read_text())) if new_path.exists() else {}
    except (json.JSONDecodeError, UnicodeDecodeError):
        return ["not comparable (not JSON)"]
    lines = []
    for key in sorted(set(before) | set(after)):
        a, b = before.get(key), after.get(key)
        if a == b:
            continue
        if a is None or b is None:
            lines.append(f"{key}: {a} -> {b}")
            continue
        rel = abs(b - a) / abs(a) if a else math.inf
        lines.append(f"{key}: {a:g} -> {b:g} ({b - a:+.3g}, {rel:.2g} relative)")
    return lines


def committed_platform(root: Path, rev: str) -> tuple[dict[str, Any] | None, str]:
    """The platform recorded in the committed bundle, or None and why it is unknown."""
    try:
        import dvc.api

        with dvc.api.open(f"{BUNDLE}/metadata.json", repo=str(root), rev=rev) as fh:
            platform = json.load(fh).get("platform")
    except Exception:  # any failure to fetch it only makes the report less specific
        return None, "the committed bundle is not in the DVC cache; `dvc pull` to compare"
    if not isinstance(platform, dict):
        return None, "the committed bundle predates platform records"
    return platform, ""


def reproduced_platform(root: Path) -> dict[str, Any]:
    """The platform the reproduced bundle records (this machine's, as its stages ran)."""
    try:
        platform = json.loads((root / BUNDLE / "metadata.json").read_text()).get("platform")
    except (OSError, ValueError):
        platform = None
    return platform if isinstance(platform, dict) else describe()


def platform_lines(root: Path, rev: str) -> list[str]:
    here, (then, why) = reproduced_platform(root), committed_platform(root, rev)
    if then is None:
        return [
            f"platform here: {json.dumps(here, sort_keys=True)}",
            f"committed platform: unknown ({why})",
        ]
    differing = [k for k in sorted(set(here) | set(then)) if here.get(k) != then.get(k)]
    if not differing:
        return [
            "platform: the same as the committed run's (architecture, BLAS kernel, library "
            "versions), so the difference comes from code, params or data, not rounding"
        ]
    return ["the platform differs from the committed run's:"] + [
        f"  {key}: committed {then.get(key)!r}, here {here.get(key)!r}" for key in differing
    ]


def main(argv: list[str] | None = None) -> int:
    parser = CommandParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rev", default="HEAD", help="the commit to compare with (HEAD)")
    parser.add_argument("--repo", type=Path, default=Path("."), help="repository root (.)")
    args = parser.parse_args(argv)
    root, rev = repo_top(args.repo), args.rev
    commit = resolve_rev(root, rev)
    files = changed_files(root, commit)
    if not files:
        print(f"committed {', '.join(WATCHED)} match the reproduction ({rev} = {commit[:12]})")
        return 0
    print(f"dvc repro changed files committed at {rev}: {', '.join(files)}")
    lock = root / "dvc.lock"
    before, after = (
        lock_outs(committed(root, commit, "dvc.lock")),
        lock_outs(lock.read_bytes() if lock.exists() else None),
    )
    outs = sorted(p for p in set(before) | set(after) if before.get(p) != after.get(p))
    if outs:
        print(f"outputs whose hash differs: {', '.join(outs)}")
    for path in files:
        if path.endswith(".json"):
            changes = metric_changes(committed(root, commit, path), root / path)
            print(f"{path}:" + ("".join(f"\n  {c}" for c in changes) or " formatting only"))
    print("\n".join(platform_lines(root, commit)))
    print("run `dvc repro` on the pinned platform, commit dvc.lock and metrics/, then `dvc push`")
    return 1
