"""Load benchmark of the HTTP service on loopback (not a test).

Starts `python -m recsys.service` on a free 127.0.0.1 port over a bundle, then drives it at a
fixed request rate with a bounded asyncio load generator (aiohttp, keep-alive connections):
a mix of known users, unknown users and anonymous sessions. Latency is measured from each
request's scheduled start, so a slow server cannot hide queueing (no coordinated omission).

1. steady: `--rate` req/s for `--seconds`;
2. the same while the bundle is hot-swapped every `--swap-every` s (admin reload and SIGHUP
   in turn; the bundle directory is reloaded in place, which costs the same load, md5 check
   and swap as a new one);
3. unless `--no-search`: the largest rate with p99 <= `--p99-ms` and no errors (doubling,
   then bisecting, `--search-steps` runs of `--seconds` each).

    python scripts/bench_service.py [--bundle models/bundle] [--seconds 60] [--rate 1000]

Every loop is bounded by count and time and the server is stopped at the end. It uses two
processes (server and generator) on this machine; on a shared 2-core machine run it briefly.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Result:
    rate: float
    seconds: float
    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0
    error_kinds: dict[str, int] = field(default_factory=dict)
    swaps: int = 0
    elapsed: float = 0.0

    def pct(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")

    @property
    def achieved(self) -> float:
        return len(self.latencies_ms) / self.elapsed if self.elapsed else 0.0

    def line(self, label: str) -> str:
        kinds = ", ".join(f"{k}: {v}" for k, v in sorted(self.error_kinds.items()))
        return (
            f"{label:<22} target {self.rate:7.0f} req/s  achieved {self.achieved:7.0f} req/s  "
            f"p50 {self.pct(50):6.2f} ms  p95 {self.pct(95):6.2f} ms  p99 {self.pct(99):6.2f} ms  "
            f"max {max(self.latencies_ms, default=float('nan')):7.2f} ms  errors {self.errors}"
            + (f" ({kinds})" if kinds else "")
            + (f"  swaps {self.swaps}" if self.swaps else "")
        )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(bundle: Path, port: int, token: str, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PORT": str(port), "BUNDLE_DIR": str(bundle)}
    env["RECSYS_ADMIN_TOKEN"] = token
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "recsys.service", "--log-level", "warning"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"error: the server exited:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            pass
        time.sleep(0.1)
    proc.terminate()
    raise SystemExit(f"error: the server did not become healthy:\n{log.read_text()}")


class Workload:
    """Request mix: known users, unknown users, anonymous sessions of 1 to 5 items."""

    def __init__(self, bundle: Path, mix: tuple[float, float, float], seed: int = 0) -> None:
        with np.load(bundle / "ids.npz", allow_pickle=False) as ids:
            self.users = ids["user_ids"].tolist()
            self.items = ids["item_ids"].tolist()
        self.rng = random.Random(seed)
        self.cumulative = np.cumsum(mix) / sum(mix)

    def next(self) -> tuple[str, str, bytes | None]:
        r = self.rng.random()
        if r < self.cumulative[0]:
            return "GET", f"/recommendations/{self.rng.choice(self.users)}?n=10", None
        if r < self.cumulative[1]:
            return "GET", f"/recommendations/new-{self.rng.randrange(10**9)}?n=10", None
        items = self.rng.sample(self.items, self.rng.randint(1, 5))
        if self.rng.random() < 0.1:
            items.append("no-such-item")
        body = json.dumps({"items": items, "n": 10}).encode()
        return "POST", "/recommendations", body


async def run_load(
    base: str,
    workload: Workload,
    rate: float,
    seconds: float,
    connections: int,
    swap_every: float = 0.0,
    token: str = "",
    server_pid: int = 0,
) -> Result:
    """Open-loop schedule of rate x seconds requests served by `connections` workers."""
    import aiohttp

    result = Result(rate, seconds)
    total = int(rate * seconds)
    next_index = 0
    start = time.perf_counter() + 0.05

    def note_error(kind: str) -> None:
        result.errors += 1
        result.error_kinds[kind] = result.error_kinds.get(kind, 0) + 1

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal next_index
        while True:
            i = next_index
            if i >= total:
                return
            next_index += 1
            due = start + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            method, path, body = workload.next()
            try:
                async with session.request(
                    method, base + path, data=body, headers={"Content-Type": "application/json"}
                ) as response:
                    await response.read()
                    if response.status != 200:
                        note_error(str(response.status))
                        continue
            except (TimeoutError, aiohttp.ClientError) as exc:
                note_error(type(exc).__name__)
                continue
            result.latencies_ms.append((time.perf_counter() - due) * 1000)

    async def swapper(session: aiohttp.ClientSession) -> None:
        k = 0
        while time.perf_counter() < start + seconds - swap_every / 2:
            await asyncio.sleep(swap_every)
            if time.perf_counter() >= start + seconds:
                return
            if k % 2 == 0:
                async with session.post(
                    base + "/admin/reload", headers={"Authorization": f"Bearer {token}"}
                ) as response:
                    await response.read()
                    if response.status != 200:
                        note_error(f"reload {response.status}")
            else:
                os.kill(server_pid, signal.SIGHUP)
            k += 1
            result.swaps += 1

    timeout = aiohttp.ClientTimeout(total=10)
    connector = aiohttp.TCPConnector(limit=connections, force_close=False)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        tasks = [asyncio.create_task(worker(session)) for _ in range(connections)]
        if swap_every > 0:
            tasks.append(asyncio.create_task(swapper(session)))
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=seconds + 60)
    result.elapsed = time.perf_counter() - start
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", default=os.environ.get("BUNDLE_DIR") or "models/bundle")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of each run (60)")
    parser.add_argument("--rate", type=float, default=1000.0, help="req/s of runs 1 and 2 (1000)")
    parser.add_argument("--swap-every", type=float, default=10.0, help="seconds between swaps (10)")
    parser.add_argument("--connections", type=int, default=32, help="keep-alive connections (32)")
    parser.add_argument("--p99-ms", type=float, default=25.0, help="latency goal of the search")
    parser.add_argument("--search-steps", type=int, default=6, help="runs of the search (6)")
    parser.add_argument("--no-search", action="store_true", help="skip the rate search")
    parser.add_argument(
        "--mix", default="0.6,0.2,0.2", help="shares of known users, unknown users, sessions"
    )
    args = parser.parse_args()
    bundle = Path(args.bundle).resolve()
    if not (bundle / "metadata.json").is_file():
        raise SystemExit(f"error: {bundle}: no bundle; run dvc repro (or pass --bundle)")
    if not (0 < args.seconds <= 600 and 0 < args.rate <= 50_000 and 1 <= args.connections <= 512):
        raise SystemExit(
            "error: expected --seconds in (0, 600], --rate in (0, 50000], --connections in [1, 512]"
        )
    try:
        mix = tuple(float(x) for x in args.mix.split(","))
        assert len(mix) == 3 and min(mix) >= 0 and sum(mix) > 0
    except (ValueError, AssertionError):
        raise SystemExit(
            f"error: --mix {args.mix!r}; expected three shares like 0.6,0.2,0.2"
        ) from None

    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass

    token = secrets.token_hex(16)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    workload = Workload(bundle, mix)  # type: ignore[arg-type]
    with tempfile.TemporaryDirectory(prefix="bench-service-") as tmp:
        log = Path(tmp) / "server.log"
        server = start_server(bundle, port, token, log)
        print(
            f"bundle {bundle} ({len(workload.users):,} users, {len(workload.items):,} items), "
            f"server pid {server.pid} on {base}, {args.connections} connections, "
            f"mix known/unknown/session {args.mix}, {args.seconds:g} s per run",
            flush=True,
        )
        try:

            def once(rate: float, swap: float = 0.0) -> Result:
                return asyncio.run(
                    run_load(
                        base,
                        workload,
                        rate,
                        args.seconds,
                        args.connections,
                        swap,
                        token,
                        server.pid,
                    )
                )

            print(once(min(args.rate, 100)).line("warm-up"), flush=True)  # first-request costs
            print(once(args.rate).line("steady"), flush=True)
            print(
                once(args.rate, args.swap_every).line(f"swap every {args.swap_every:g} s"),
                flush=True,
            )
            if not args.no_search:
                good, bad, rate = 0.0, float("inf"), 250.0
                for _ in range(args.search_steps):
                    result = once(rate)
                    ok = result.errors == 0 and result.pct(99) <= args.p99_ms
                    ok = ok and result.achieved >= 0.95 * rate
                    print(result.line(f"search {'ok' if ok else 'over'}"), flush=True)
                    if ok:
                        good = rate
                    else:
                        bad = rate
                    rate = rate * 2 if bad == float("inf") else (good + bad) / 2
                    if bad - good < 50:
                        break
                print(
                    f"largest rate with p99 <= {args.p99_ms:g} ms and no errors: "
                    f"{good:.0f} req/s" + ("" if good else " (none of those tried)"),
                    flush=True,
                )
        finally:
            server.terminate()
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                server.kill()
            text = log.read_text()
            if "Traceback" in text or "ERROR" in text:
                print("server log:\n" + text[-3000:], file=sys.stderr)


if __name__ == "__main__":
    main()
