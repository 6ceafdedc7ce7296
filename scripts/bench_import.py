"""Benchmark `generate.source: files`: import speed (rows/s) and peak memory (max RSS).

Writes a Personalize-format log with foreign event names (click, cart, purchase), columns in
an unusual order, lower-case headers, an EVENT_VALUE column and millisecond timestamps, then
imports it in a fresh process per size so each peak RSS is that import's own.

    python scripts/bench_import.py --rows 800000 8000000 [--gzip] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

REPO = Path(__file__).resolve().parents[1]
EVENTS = ["click", "cart", "purchase"]
EVENT_SHARES = [0.9, 0.07, 0.03]

CHILD = """
import json, resource, sys, time
from pathlib import Path
from recsys.events import ImportParams, import_events
start = time.perf_counter()
import_events(ImportParams(Path(sys.argv[1]), None, None, "auto"), log=lambda _: None)
seconds = time.perf_counter() - start
peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"seconds": seconds, "peak_mib": peak_kib / 1024}))
"""


def write_log(path: Path, rows: int, seed: int = 0) -> None:
    """A synthetic log written in 1M-row batches (ids as dictionaries keep this lean)."""
    rng = np.random.default_rng(seed)
    users = max(1, rows // 8)
    items = 2500
    user_names = pa.array([f"user-{i}" for i in range(users)])
    item_names = pa.array([f"item-{i:05d}" for i in range(items)])
    start_ms = 1_700_000_000_000
    schema = pa.schema(
        [
            ("event_type", pa.dictionary(pa.int8(), pa.string())),
            ("timestamp", pa.int64()),
            ("item_id", pa.dictionary(pa.int32(), pa.string())),
            ("event_value", pa.float64()),
            ("user_id", pa.dictionary(pa.int32(), pa.string())),
        ]
    )
    gzipped = path.name.endswith(".gz")
    with (
        (
            pa.CompressedOutputStream(str(path), "gzip") if gzipped else pa.OSFile(str(path), "wb")
        ) as sink,
        pacsv.CSVWriter(
            sink,
            schema,
            write_options=pacsv.WriteOptions(quoting_style="none", quoting_header="none"),
        ) as writer,
    ):
        for lo in range(0, rows, 1_000_000):
            n = min(1_000_000, rows - lo)
            event = rng.choice(len(EVENTS), size=n, p=EVENT_SHARES).astype(np.int8)
            batch = pa.record_batch(
                [
                    pa.DictionaryArray.from_arrays(event, EVENTS),
                    pa.array(start_ms + (lo + np.arange(n)) * 3000 + rng.integers(0, 999, n)),
                    pa.DictionaryArray.from_arrays(
                        rng.integers(0, items, n).astype(np.int32), item_names
                    ),
                    pa.array(np.round(rng.random(n) * 100, 2)),
                    pa.DictionaryArray.from_arrays(
                        rng.integers(0, users, n).astype(np.int32), user_names
                    ),
                ],
                schema=schema,
            )
            writer.write_batch(batch)


def measure(workdir: Path, relative: str) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", CHILD, relative],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        sys.exit(f"import failed: {done.stderr.strip()}")
    return json.loads(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[800_000, 8_000_000])
    parser.add_argument("--gzip", action="store_true", help="write and import .csv.gz")
    parser.add_argument("--keep", type=Path, help="work in this directory and keep the files")
    args = parser.parse_args()

    workdir = args.keep or Path(tempfile.mkdtemp(prefix="bench_import_"))
    (workdir / "events").mkdir(parents=True, exist_ok=True)
    try:
        for rows in args.rows:
            relative = f"events/bench_{rows}.csv" + (".gz" if args.gzip else "")
            started = time.perf_counter()
            write_log(workdir / relative, rows)
            size_mib = (workdir / relative).stat().st_size / 2**20
            print(
                f"wrote {rows:,} rows ({size_mib:,.0f} MiB) in "
                f"{time.perf_counter() - started:.1f} s",
                flush=True,
            )
            result = measure(workdir, relative)
            print(
                f"import {rows:>11,} rows{' (gzip)' if args.gzip else ''}: "
                f"{result['seconds']:6.1f} s, {rows / result['seconds']:>11,.0f} rows/s, "
                f"peak RSS {result['peak_mib']:,.0f} MiB",
                flush=True,
            )
    finally:
        if args.keep is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
