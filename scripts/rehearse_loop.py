"""Rehearse the retraining loop locally, in one command, before trusting it with production.

    python scripts/rehearse_loop.py [--days 14] [--users 3000] [--keep]     (make rehearse)

What it does, all on this machine: starts the local S3-compatible server on a free port,
clones this repository's HEAD into a temporary folder, cuts a small synthetic shop into one
gzip CSV per day and uploads all days but the last to a bucket prefix, imports the prefix
(`dvc import-url`) and runs the retrain cycle (`make retrain`, the same commands as
.github/workflows/retrain.yml): the first model is promoted to `prod`. Then the last day is
uploaded and `make retrain` runs again: events updated, pipeline reproduced, the gate's
verdict printed and the promotion decided by params.yaml's `gate:` rule. The server is
stopped at the end; the clone is deleted unless --keep.
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from types import ModuleType

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from recsys.params import update_params_file

ROOT = Path(__file__).resolve().parents[1]


def _s3_dev() -> ModuleType:
    spec = importlib.util.spec_from_file_location("s3_dev", ROOT / "scripts" / "s3_dev.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sh(command: str, cwd: Path, env: dict[str, str]) -> str:
    """Run one shell line, echoing it and its output; stop the rehearsal if it fails."""
    print(f"$ {command}", flush=True)
    proc = subprocess.run(
        ["sh", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=1800
    )
    out = (proc.stdout + proc.stderr).strip()
    if out:
        print(out, flush=True)
    if proc.returncode != 0:
        raise SystemExit(f"error: `{command}` exited {proc.returncode}")
    return proc.stdout


def daily_files(repo: Path, env: dict[str, str]) -> dict[str, bytes]:
    """The synthetic shop's event log cut into one gzip CSV per UTC day, by name."""
    sh("python -m stages.generate", repo, env)
    table = pacsv.read_csv(
        repo / "data/interactions.csv",
        convert_options=pacsv.ConvertOptions(
            column_types={"USER_ID": pa.string(), "ITEM_ID": pa.string()}
        ),
    )
    day = pc.strftime(pc.cast(table["TIMESTAMP"], pa.timestamp("s", "UTC")), "%Y-%m-%d")
    files = {}
    for name in sorted(set(day.to_pylist())):
        part = table.filter(pc.equal(day, name))
        sink = pa.BufferOutputStream()
        pacsv.write_csv(part, sink)
        files[f"{name}.csv.gz"] = gzip.compress(sink.getvalue().to_pybytes(), mtime=0)
    return files


def rehearse(work: Path, endpoint: str, s3: ModuleType, args: argparse.Namespace) -> None:
    env = dict(os.environ)
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        AWS_ACCESS_KEY_ID=s3.ACCESS_KEY_ID,
        AWS_SECRET_ACCESS_KEY=s3.SECRET_ACCESS_KEY,
        AWS_DEFAULT_REGION=s3.REGION,
        AWS_ENDPOINT_URL_S3=endpoint,
        DVC_NO_ANALYTICS="1",
        GIT_AUTHOR_NAME="rehearsal",
        GIT_AUTHOR_EMAIL="rehearsal@example.invalid",
        GIT_COMMITTER_NAME="rehearsal",
        GIT_COMMITTER_EMAIL="rehearsal@example.invalid",
    )
    env.pop("AWS_PROFILE", None)
    bucket = "rehearsal"
    s3.ensure_bucket(endpoint, bucket)
    client = s3.s3_client(endpoint)
    origin, repo = work / "origin.git", work / "repo"
    sh(f"git init -q --bare -b main {origin}", work, env)
    sh(f"git clone -q {ROOT} {repo}", work, env)
    (repo / ".venv").symlink_to(Path(sys.prefix))  # the Makefile finds its tools there
    sh(f"git remote set-url origin {origin}", repo, env)
    sh(f"dvc remote modify storage url s3://{bucket}/store", repo, env)
    sizes = {"users": args.users, "interactions": args.users * 8, "days": args.days}
    update_params_file(repo / "params.yaml", {"generate": sizes})
    days = daily_files(repo, env)
    names = sorted(days)
    print(f"rehearsal: {len(names)} daily files, {names[0]} .. {names[-1]}", flush=True)
    for name in names[:-1]:
        client.put_object(Bucket=bucket, Key=f"daily/{name}", Body=days[name])
    update_params_file(
        repo / "params.yaml",
        {
            "generate": {"source": "files", "interactions_file": "events/daily"},
            "mask": {"strategy": "global_time", "cutoff": 1 - 1 / len(names)},
        },
    )
    sh(f"dvc import-url s3://{bucket}/daily/ events/daily", repo, env)
    sh(
        "git add -A && git commit -qm 'rehearsal: events from S3' && git push -q origin HEAD",
        repo,
        env,
    )
    print("rehearsal: day 1: make retrain", flush=True)
    sh("make retrain", repo, env)
    client.put_object(Bucket=bucket, Key=f"daily/{names[-1]}", Body=days[names[-1]])
    print(f"rehearsal: day 2: {names[-1]} landed in s3://{bucket}/daily/; make retrain", flush=True)
    sh("make retrain", repo, env)
    sh("gto show recsys-bundle", repo, env)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--days", type=int, default=14, help="days of synthetic events (14)")
    parser.add_argument("--users", type=int, default=3000, help="synthetic users (3000)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary clone")
    args = parser.parse_args(argv)
    s3 = _s3_dev()
    work = Path(tempfile.mkdtemp(prefix="rehearse-loop-"))
    port = s3.free_port()
    endpoint = s3.endpoint_for(port)
    proc = s3.launch(port, work / "s3.log")
    try:
        s3.wait_until_up(endpoint, proc, work / "s3.log")
        rehearse(work, endpoint, s3, args)
    finally:
        s3.terminate(proc.pid)
        if args.keep:
            print(f"rehearsal: kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
