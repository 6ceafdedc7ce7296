"""CI gate: do the committed `dvc.lock` and `metrics/` match what `dvc repro` just gave?

    python scripts/check_repro.py [--rev HEAD]

Exit 0 when they are byte-identical. Otherwise exit 1 and say what differs: which outputs
(by their dvc.lock hashes), by how much for each metric, and whether this machine's platform
(CPU architecture, BLAS kernel, library versions) differs from the one recorded in the
committed bundle. Byte-identical results hold across x86-64 machines with the same pinned
BLAS kernel and library versions; elsewhere (say aarch64) small metric differences are
rounding, not a change of behaviour.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recsys.blas import describe  # noqa: E402  (after the path set-up)
from recsys.paths import BUNDLE  # noqa: E402

WATCHED = ("dvc.lock", "metrics")


def git(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True)


def committed(rev: str, path: str) -> bytes | None:
    shown = git("show", f"{rev}:{path}")
    return shown.stdout if shown.returncode == 0 else None


def changed_files(rev: str) -> list[str]:
    """Watched files that differ from `rev`, are new, or are gone."""
    diff = git("diff", "--name-only", rev, "--", *WATCHED).stdout.decode().split()
    new = git("ls-files", "--others", "--exclude-standard", "--", *WATCHED).stdout.decode()
    return sorted(set(diff) | set(new.split()))


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


def committed_platform(rev: str) -> tuple[dict[str, Any] | None, str]:
    """The platform recorded in the committed bundle, or None and why it is unknown."""
    try:
        import dvc.api

        with dvc.api.open(f"{BUNDLE}/metadata.json", repo=str(ROOT), rev=rev) as fh:
            platform = json.load(fh).get("platform")
    except Exception:  # any failure to fetch it only makes the report less specific
        return None, "the committed bundle is not in the DVC cache; `dvc pull` to compare"
    if not isinstance(platform, dict):
        return None, "the committed bundle predates platform records"
    return platform, ""


def reproduced_platform() -> dict[str, Any]:
    """The platform the reproduced bundle records (this machine's, as its stages ran)."""
    try:
        platform = json.loads((ROOT / BUNDLE / "metadata.json").read_text()).get("platform")
    except (OSError, ValueError):
        platform = None
    return platform if isinstance(platform, dict) else describe()


def platform_lines(rev: str) -> list[str]:
    here, (then, why) = reproduced_platform(), committed_platform(rev)
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rev", default="HEAD", help="the commit to compare with (HEAD)")
    rev = parser.parse_args().rev
    files = changed_files(rev)
    if not files:
        print(f"committed {', '.join(WATCHED)} match the reproduction")
        return 0
    print(f"dvc repro changed files committed at {rev}: {', '.join(files)}")
    before, after = (
        lock_outs(committed(rev, "dvc.lock")),
        lock_outs((ROOT / "dvc.lock").read_bytes() if (ROOT / "dvc.lock").exists() else None),
    )
    outs = sorted(p for p in set(before) | set(after) if before.get(p) != after.get(p))
    if outs:
        print(f"outputs whose hash differs: {', '.join(outs)}")
    for path in files:
        if path.endswith(".json"):
            changes = metric_changes(committed(rev, path), ROOT / path)
            print(f"{path}:" + ("".join(f"\n  {c}" for c in changes) or " formatting only"))
    print("\n".join(platform_lines(rev)))
    print("run `dvc repro` on the pinned platform, commit dvc.lock and metrics/, then `dvc push`")
    return 1


if __name__ == "__main__":
    sys.exit(main())
