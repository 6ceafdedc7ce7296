"""Which engine should the confidence stage use? The same aggregation, three ways, one input.

Not a test: it prints figures. Each engine runs in its own process on the same event log and
writes the same Parquet file (pairs sorted by USER_ID, ITEM_ID; CONFIDENCE = sum of the event
weights, LAST_TIMESTAMP = the latest event), so wall time and peak RSS compare like for like:

- `ours`: the stage's own code (pyarrow's multi-threaded CSV reader into dictionary-encoded
  columns, then numpy reductions of int64 pair keys, 8M events at a time);
- `duckdb`: one SQL query (read_csv, join the weights, GROUP BY, ORDER BY, COPY to Parquet),
  with its own out-of-core hash aggregation;
- `polars`: the lazy API on the streaming engine (scan_csv ... sink_parquet).

DuckDB and Polars are not requirements of the project: install them to compare
(`pip install duckdb==1.4.2 polars==1.35.2`); an engine that is not installed is skipped.

    python scripts/bench_engines.py --scale 10        # 1M users, 8M events
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchmark import run_stage, scratch_parent, scratch_repo  # noqa: E402

THREADS = 2

OURS = """
from recsys.confidence import aggregate, load_events, write_pairs
pairs = aggregate(load_events("{log}"), {weights}, "sum", 1.0)
write_pairs(pairs, "{out}")
"""

DUCKDB = """
import duckdb
con = duckdb.connect()
con.execute("SET threads = {threads}")
con.execute("CREATE TABLE w (EVENT_TYPE VARCHAR, weight DOUBLE)")
con.executemany("INSERT INTO w VALUES (?, ?)", list({weights}.items()))
con.execute('''
COPY (
  SELECT USER_ID, ITEM_ID, CAST(sum(weight) AS FLOAT) AS CONFIDENCE,
         max(TIMESTAMP) AS LAST_TIMESTAMP
  FROM read_csv('{log}', header = true, all_varchar = false,
                types = {{'USER_ID': 'VARCHAR', 'ITEM_ID': 'VARCHAR',
                         'EVENT_TYPE': 'VARCHAR', 'TIMESTAMP': 'BIGINT'}})
  JOIN w USING (EVENT_TYPE)
  GROUP BY USER_ID, ITEM_ID
  ORDER BY USER_ID, ITEM_ID
) TO '{out}' (FORMAT parquet, COMPRESSION zstd)
''')
"""

POLARS = """
import polars as pl
weights = pl.DataFrame({{"EVENT_TYPE": list({weights}), "weight": list({weights}.values())}})
(
    pl.scan_csv("{log}", schema_overrides={{"USER_ID": pl.String, "ITEM_ID": pl.String,
                                           "EVENT_TYPE": pl.String, "TIMESTAMP": pl.Int64}})
    .select("USER_ID", "ITEM_ID", "EVENT_TYPE", "TIMESTAMP")
    .join(weights.lazy(), on="EVENT_TYPE")
    .group_by("USER_ID", "ITEM_ID")
    .agg(pl.col("weight").sum().cast(pl.Float32).alias("CONFIDENCE"),
         pl.col("TIMESTAMP").max().alias("LAST_TIMESTAMP"))
    .sort("USER_ID", "ITEM_ID")
    .sink_parquet("{out}", compression="zstd", engine="streaming")
)
"""

ENGINES = {"ours": (None, OURS), "duckdb": ("duckdb", DUCKDB), "polars": ("polars", POLARS)}


def installed(module: str | None) -> bool:
    if module is None:
        return True
    code = f"import {module}"
    return subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0


def measure(code: str, cwd: Path) -> tuple[float, float, float]:
    """(wall s, CPU s, peak RSS MiB) of `code` in its own process; stops on a failure."""
    env = {**os.environ, "POLARS_MAX_THREADS": str(THREADS), "RECSYS_THREADS": str(THREADS)}
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=cwd, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"error: the engine's process failed:\n{code}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def same_pairs(a: Path, b: Path) -> str:
    """Whether two Parquet files hold the same pairs, in order, with the same values."""
    import numpy as np
    import pyarrow.parquet as pq

    x, y = pq.read_table(a), pq.read_table(b)
    if x.num_rows != y.num_rows:
        return f"different: {x.num_rows:,} vs {y.num_rows:,} pairs"
    for column in ("USER_ID", "ITEM_ID", "CONFIDENCE", "LAST_TIMESTAMP"):
        left = x[column].to_numpy()
        right = y[column].to_numpy()
        if column in ("USER_ID", "ITEM_ID"):
            left, right = left.astype(str), right.astype(str)
        if not np.array_equal(left, right):
            return f"different {column}"
    return "same pairs"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=10.0)
    parser.add_argument("--keep", action="store_true", help="keep the scratch copy")
    args = parser.parse_args()
    if args.scale <= 0:
        parser.error(f"--scale must be positive, got {args.scale:g}")
    with scratch_parent("recsys-bench-engines-", args.keep) as parent:
        repo = scratch_repo(args.scale, parent)
        params = yaml.safe_load((repo / "params.yaml").read_text())
        run_stage("generate", repo)
        log = repo / "data" / "interactions.csv"
        weights = {str(k): float(v) for k, v in params["confidence"]["weights"].items()}
        size = log.stat().st_size / 2**20
        print(
            f"== {params['generate']['interactions']:,} events ({size:,.0f} MiB of CSV), "
            f"{THREADS} threads each; sum aggregation"
        )
        print(f"{'engine':<8}{'wall s':>9}{'CPU s':>9}{'peak MiB':>10}{'events/s':>13}  result")
        ours_out = None
        base = None
        for name, (module, template) in ENGINES.items():
            if not installed(module):
                print(f"{name:<8} not installed (pip install {module}); skipped")
                continue
            out = parent / f"{name}.parquet"
            code = template.format(log=log, out=out, weights=weights, threads=THREADS)
            wall, cpu, rss = measure(code, repo)
            base = base or wall
            check = "reference" if ours_out is None else same_pairs(ours_out, out)
            ours_out = ours_out or out
            rate = params["generate"]["interactions"] / wall
            print(
                f"{name:<8}{wall:>9.2f}{cpu:>9.2f}{rss:>10.0f}{rate:>13,.0f}  "
                f"{check}; {wall / base:.2f}x ours' wall"
            )


if __name__ == "__main__":
    main()
