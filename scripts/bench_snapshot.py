"""What the service's private bundle snapshot costs (not a test).

The service loads a bundle by copying its files into a private directory (hashing them as
they pass), mapping the copy and unlinking it (`load_bundle(..., snapshot_dir=...)`). This
measures, in one run and each in a fresh process, that load against the baseline of mapping
the bundle's own files after hashing them in place: wall time, anonymous memory (RssAnon,
the process's own) and file-backed memory (RssFile, pages the kernel shares and can
reclaim) after answering `--users` random users, and the disk the snapshot holds while it is
served. Then the per-byte cost of hashing in place vs copying while hashing, on a synthetic
file of `--synthetic-mb` MB in the snapshot directory, and what that gives for a bundle of
`--project-gb` GB (the 100x bundle is 1.8 GB).

    python scripts/bench_snapshot.py [--bundle models/bundle] [--snapshot-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import json, sys, time
import numpy as np
from recsys.bundle import load_bundle
bundle_dir, snapshot, users = sys.argv[1], sys.argv[2] or None, int(sys.argv[3])
start = time.perf_counter()
bundle = load_bundle(bundle_dir, snapshot_dir=snapshot)
load_s = time.perf_counter() - start
rng = np.random.default_rng(0)
picked = bundle.user_ids[rng.integers(0, bundle.user_ids.size, users)].tolist()
start = time.perf_counter()
for user in picked:
    bundle.recommend(user, 10)
per_user_us = (time.perf_counter() - start) / users * 1e6
status = dict(
    line.split(":", 1) for line in open("/proc/self/status") if line.startswith("Rss")
)
print(json.dumps({
    "load_s": load_s,
    "per_user_us": per_user_us,
    "rss_anon_mb": int(status["RssAnon"].split()[0]) / 1024,
    "rss_file_mb": int(status["RssFile"].split()[0]) / 1024,
}))
"""


def child(bundle: Path, snapshot: str, users: int) -> dict[str, float]:
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(bundle), snapshot, str(users)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(proc.stdout)


BYTES_CHILD = """
import json, os, sys, time
from pathlib import Path
from recsys.bundle import _copy_verified
from recsys.io import md5sum
directory, megabytes = Path(sys.argv[1]), int(sys.argv[2])
source = directory / ".bench-snapshot-source"
target = directory / ".bench-snapshot-copy"
block = os.urandom(1 << 20)
try:
    with source.open("wb") as fh:
        for _ in range(megabytes):
            fh.write(block)
    md5sum(source)  # both timings below read from the page cache
    start = time.perf_counter()
    digest = md5sum(source)
    hash_s = time.perf_counter() - start
    start = time.perf_counter()
    _copy_verified(source, target, digest)
    copy_s = time.perf_counter() - start
finally:
    source.unlink(missing_ok=True)
    target.unlink(missing_ok=True)
print(json.dumps([hash_s, copy_s]))
"""


def per_byte(directory: Path, megabytes: int) -> tuple[float, float]:
    """(s per GB hashing in place, s per GB copying while hashing) on a synthetic file,
    with this tree's package (a child process, as for the loads)."""
    proc = subprocess.run(
        [sys.executable, "-c", BYTES_CHILD, str(directory), str(megabytes)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        check=True,
    )
    hash_s, copy_s = json.loads(proc.stdout)
    gb = megabytes / 1024
    return hash_s / gb, copy_s / gb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, default=ROOT / "models" / "bundle")
    parser.add_argument("--snapshot-dir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--users", type=int, default=2000, help="random users answered (2000)")
    parser.add_argument("--synthetic-mb", type=int, default=512, help="synthetic file (512)")
    parser.add_argument("--project-gb", type=float, default=1.8, help="bundle to project (1.8)")
    args = parser.parse_args()
    if not (args.bundle / "metadata.json").is_file():
        raise SystemExit(f"error: {args.bundle}: no bundle; run dvc repro (or pass --bundle)")
    if not args.snapshot_dir.is_dir():
        raise SystemExit(f"error: --snapshot-dir {args.snapshot_dir}: not a directory")
    files = sum(p.stat().st_size for p in args.bundle.iterdir() if p.is_file())
    bundle = args.bundle.resolve()
    shown = bundle.relative_to(ROOT) if bundle.is_relative_to(ROOT) else bundle
    print(
        f"bundle {shown} ({files / 2**20:.1f} MiB of files), snapshot dir "
        f"{args.snapshot_dir}, {args.users} random users, each load in a fresh process"
    )
    for label, snapshot in (("in place (baseline)", ""), ("snapshot", str(args.snapshot_dir))):
        runs = [child(args.bundle, snapshot, args.users) for _ in range(3)]
        best = min(runs, key=lambda r: r["load_s"])
        print(
            f"{label:20s} load {best['load_s'] * 1000:7.1f} ms (best of 3)  "
            f"recommend {best['per_user_us']:5.1f} us/user  RssAnon {best['rss_anon_mb']:6.1f} "
            f"MiB  RssFile {best['rss_file_mb']:6.1f} MiB"
        )
    print(f"snapshot disk held while served: {files / 2**20:.1f} MiB (the bundle's files)")
    hash_s, copy_s = per_byte(args.snapshot_dir, args.synthetic_mb)
    print(
        f"per GB ({args.synthetic_mb} MB synthetic file, warm cache): md5 in place "
        f"{hash_s:.2f} s, copy + md5 {copy_s:.2f} s ({copy_s / hash_s:.2f}x)"
    )
    print(
        f"projected for a {args.project_gb:g} GB bundle: load about "
        f"{hash_s * args.project_gb:.1f} s in place vs {copy_s * args.project_gb:.1f} s with "
        f"the snapshot, plus {args.project_gb:g} GB of disk in the snapshot dir"
    )


if __name__ == "__main__":
    main()
