"""Load benchmark of the HTTP service on loopback (not a test).

Starts `recsys serve` on a free 127.0.0.1 port over a bundle, then drives it at a
fixed request rate with a lean asyncio load generator on uvloop: `--connections` keep-alive
HTTP/1.1 connections that write prebuilt request bytes and read each answer by its
Content-Length. The requests are a pool of POOL_SIZE drawn once from a seeded mix of known
users, unknown users and anonymous sessions, then cycled, so per request the generator does
little more than one write and one read. Latency is measured from each request's scheduled
start, so a slow server cannot hide queueing (no coordinated omission). Every line also gives
the CPU time per request of the generator and of the server, which share the machine's cores.

After a warm-up (100 req/s for at most WARM_UP_SECONDS):

1. steady: `--rate` req/s for `--seconds`;
2. the baseline, unless `--no-baseline`: the same rate for at most BASELINE_SECONDS with the
   aiohttp client this generator replaced, and the ratio of its CPU per request to the lean
   client's in run 1;
3. the same as 1 while the bundle is hot-swapped every `--swap-every` s (admin reload and
   SIGHUP in turn; the bundle directory is reloaded in place, which costs the same load, md5
   check and swap as a new one);
4. unless `--no-search`: the largest rate with p99 <= `--p99-ms` and no errors (from run 1,
   doubling, then bisecting, `--search-steps` more runs of `--seconds` each);
5. unless `--no-wrk`, when wrk is installed: the closed-loop capacity of the server per kind
   of request (wrk, 16 connections, WRK_SECONDS each), a cross-check that needs no Python
   generator.

    python scripts/bench_service.py [--bundle models/bundle] [--seconds 60] [--rate 1000]

Every loop is bounded by count and time, every request by REQUEST_TIMEOUT and every run by
an overall timeout, and the server is stopped at the end. The server and the generator are
two processes on this machine; on a busy machine the figures are noisy, so run it briefly.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
POOL_SIZE = 4096  # prebuilt requests, cycled
REQUEST_TIMEOUT = 10.0  # seconds for one request (connect, write, answer) before it fails
RELOAD_TIMEOUT = 120.0  # seconds for one admin reload of the bundle
WARM_UP_SECONDS = 10.0  # at 100 req/s (or --rate if lower)
BASELINE_SECONDS = 10.0
WRK_SECONDS = 5
WRK_CONNECTIONS = 16


@dataclass
class Result:
    rate: float
    seconds: float
    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0
    error_kinds: dict[str, int] = field(default_factory=dict)
    swaps: int = 0
    reconnects: int = 0  # connections the server had closed while idle, opened again
    requests: int = 0  # scheduled
    elapsed: float = 0.0
    generator_cpu_s: float = 0.0
    server_cpu_s: float = 0.0

    def note_error(self, kind: str, count: int = 1) -> None:
        self.errors += count
        self.error_kinds[kind] = self.error_kinds.get(kind, 0) + count

    def pct(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")

    @property
    def achieved(self) -> float:
        return len(self.latencies_ms) / self.elapsed if self.elapsed else 0.0

    @property
    def generator_us(self) -> float:
        """Generator CPU time per scheduled request, microseconds."""
        return self.generator_cpu_s / self.requests * 1e6 if self.requests else float("nan")

    @property
    def server_us(self) -> float:
        return self.server_cpu_s / self.requests * 1e6 if self.requests else float("nan")

    def line(self, label: str) -> str:
        kinds = ", ".join(f"{k}: {v}" for k, v in sorted(self.error_kinds.items()))
        return (
            f"{label:<22} target {self.rate:7.0f} req/s  achieved {self.achieved:7.0f} req/s  "
            f"p50 {self.pct(50):6.2f} ms  p95 {self.pct(95):6.2f} ms  p99 {self.pct(99):6.2f} ms  "
            f"max {max(self.latencies_ms, default=float('nan')):7.2f} ms  errors {self.errors}"
            + (f" ({kinds})" if kinds else "")
            + (f"  swaps {self.swaps}" if self.swaps else "")
            + (f"  reconnects {self.reconnects}" if self.reconnects else "")
            + f"  CPU/request generator {self.generator_us:4.0f} us server {self.server_us:4.0f} us"
        )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(
    bundle: Path, port: int, token: str, log: Path, source: Path = ROOT
) -> subprocess.Popen[bytes]:
    """`recsys serve` with the package from `source` (this tree, or --against's)."""
    env = {**os.environ, "PYTHONPATH": str(source), "PORT": str(port), "BUNDLE_DIR": str(bundle)}
    env["RECSYS_ADMIN_TOKEN"] = token
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "recsys"), "serve", "--log-level", "warning"],
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


# --------------------------------------------------------------------------- requests


@dataclass(frozen=True)
class Request:
    kind: str  # known, unknown, session
    method: str
    path: str
    body: bytes | None
    raw: bytes  # the whole HTTP/1.1 request, as written on a keep-alive connection


def http_request(
    method: str, path: str, host: str, body: bytes | None = None, headers: tuple[str, ...] = ()
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", *headers]
    if body is not None:
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + (body or b"")


class Workload:
    """Request mix: known users, unknown users, anonymous sessions of 1 to 5 items."""

    def __init__(self, bundle: Path, mix: tuple[float, float, float], seed: int = 0) -> None:
        with np.load(bundle / "ids.npz", allow_pickle=False) as ids:
            self.users = ids["user_ids"].tolist()
            self.items = ids["item_ids"].tolist()
        self.rng = random.Random(seed)
        self.cumulative = np.cumsum(mix) / sum(mix)

    def next(self) -> tuple[str, str, str, bytes | None]:
        r = self.rng.random()
        if r < self.cumulative[0]:
            user = quote(self.rng.choice(self.users), safe="")
            return "known", "GET", f"/recommendations/{user}?n=10", None
        if r < self.cumulative[1]:
            return "unknown", "GET", f"/recommendations/new-{self.rng.randrange(10**9)}?n=10", None
        items = self.rng.sample(self.items, self.rng.randint(1, 5))
        if self.rng.random() < 0.1:
            items.append("no-such-item")
        body = json.dumps({"items": items, "n": 10}).encode()
        return "session", "POST", "/recommendations", body

    def pool(self, host: str, size: int = POOL_SIZE) -> list[Request]:
        """`size` requests drawn in order, each with its bytes built once."""
        out = []
        for _ in range(size):
            kind, method, path, body = self.next()
            out.append(Request(kind, method, path, body, http_request(method, path, host, body)))
        return out


# --------------------------------------------------------------------------- clients


class ProtocolError(Exception):
    """An answer that is not HTTP/1.x with a Content-Length."""


class Connection:
    """One keep-alive HTTP/1.1 connection that writes prebuilt requests and reads each answer
    by its Content-Length; opened again on the next request after it was closed."""

    errors: tuple[type[BaseException], ...] = (
        OSError,  # refused, reset, TimeoutError
        EOFError,  # asyncio.IncompleteReadError: closed mid-answer
        asyncio.LimitOverrunError,
        ProtocolError,
        ValueError,
    )

    def __init__(self, host: str, port: int, result: Result) -> None:
        self.host, self.port, self.result = host, port, result
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self.close()
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def send(self, request: Request) -> int:
        """Write the request, read the whole answer; its status code."""
        reader = self.reader
        if reader is None or reader.at_eof():
            if reader is not None:  # the server closed it while idle (keep-alive timeout)
                self.result.reconnects += 1
            await self.open()
            reader = self.reader
            assert reader is not None
        self.writer.write(request.raw)  # type: ignore[union-attr]
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1."):
            raise ProtocolError("not an HTTP/1.x answer")
        low = head.lower()
        at = low.find(b"\r\ncontent-length:")
        if at < 0:
            raise ProtocolError("no Content-Length")
        at += 17
        length = int(head[at : head.index(b"\r\n", at)])
        if length:
            await reader.readexactly(length)
        if b"\r\nconnection: close\r\n" in low:
            self.close()
        return int(head[9:12])


class AiohttpClient:
    """The generator's former client, kept as the in-run baseline: one aiohttp session with
    `connections` pooled keep-alive connections."""

    def __init__(self, session: Any, base: str) -> None:
        import aiohttp

        self.session, self.base = session, base
        self.errors: tuple[type[BaseException], ...] = (OSError, aiohttp.ClientError)

    async def send(self, request: Request) -> int:
        async with self.session.request(
            request.method,
            self.base + request.path,
            data=request.body,
            headers={"Content-Type": "application/json"},
        ) as response:
            await response.read()
            return int(response.status)

    def close(self) -> None:
        pass


def error_kind(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, EOFError):
        return "closed"
    return type(exc).__name__


async def fetch_once(host: str, port: int, raw: bytes, timeout: float) -> int:
    """One request on its own connection; the status code."""
    conn = Connection(host, port, Result(0, 0))
    try:
        async with asyncio.timeout(timeout):
            return await conn.send(Request("admin", "", "", None, raw))
    finally:
        conn.close()


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    token: str
    server_pid: int

    @property
    def base(self) -> str:
        return f"http://{self.host}:{self.port}"


async def run_load(
    target: Target,
    pool: list[Request],
    rate: float,
    seconds: float,
    connections: int,
    swap_every: float = 0.0,
    client: str = "lean",
) -> Result:
    """Open-loop schedule of rate x seconds requests (request i is due at start + i / rate)
    served by `connections` workers, each with its own connection."""
    result = Result(rate, seconds)
    total = result.requests = int(rate * seconds)
    pool_size = len(pool)
    latencies = result.latencies_ms
    clock = time.perf_counter
    next_index = 0
    start = 0.0

    async def worker(conn: Connection | AiohttpClient) -> None:
        nonlocal next_index
        send, errors = conn.send, conn.errors
        while next_index < total:
            i = next_index
            next_index = i + 1
            due = start + i / rate
            delay = due - clock()
            if delay > 0:
                await asyncio.sleep(delay)
            # The event loop's timers are coarse (1 ms on uvloop), so a request may go out a
            # little early: then its latency counts from when it was sent.
            sent = clock()
            try:
                async with asyncio.timeout(REQUEST_TIMEOUT):
                    status = await send(pool[i % pool_size])
            except errors as exc:
                result.note_error(error_kind(exc))
                conn.close()
                continue
            if status != 200:
                result.note_error(str(status))
                continue
            latencies.append((clock() - (sent if sent < due else due)) * 1000)

    async def swapper() -> None:
        auth = (f"Authorization: Bearer {target.token}",)
        reload = http_request("POST", "/admin/reload", f"{target.host}:{target.port}", b"", auth)
        for k in range(int(seconds / swap_every) + 1):
            at = start + (k + 1) * swap_every  # swaps at swap_every, 2 swap_every, ...
            if at >= start + seconds:
                return
            await asyncio.sleep(at - clock())
            if k % 2 == 0:
                try:
                    status = await fetch_once(target.host, target.port, reload, RELOAD_TIMEOUT)
                except Connection.errors as exc:
                    result.note_error(f"reload {error_kind(exc)}")
                else:
                    if status != 200:
                        result.note_error(f"reload {status}")
            else:
                os.kill(target.server_pid, signal.SIGHUP)
            result.swaps += 1

    async def drive(conns: list[Connection] | list[AiohttpClient]) -> None:
        nonlocal start
        server_cpu = process_cpu(target.server_pid)
        cpu = time.process_time()
        start = clock() + 0.01
        tasks = [asyncio.create_task(worker(conn)) for conn in conns]
        if swap_every > 0:
            tasks.append(asyncio.create_task(swapper()))
        try:
            await asyncio.wait_for(asyncio.gather(*tasks), timeout=seconds + 60)
        except TimeoutError:
            result.note_error("run timeout")
        result.elapsed = clock() - start
        result.generator_cpu_s = time.process_time() - cpu
        result.server_cpu_s = process_cpu(target.server_pid) - server_cpu
        unfinished = (
            total
            - len(latencies)
            - sum(v for k, v in result.error_kinds.items() if not k.startswith(("reload", "run")))
        )
        if unfinished > 0:
            result.note_error("unfinished", unfinished)

    if client == "aiohttp":
        import aiohttp

        connector = aiohttp.TCPConnector(limit=connections, force_close=False)
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            await drive([AiohttpClient(session, target.base)] * connections)
        return result
    conns = [Connection(target.host, target.port, result) for _ in range(connections)]
    # Open the connections before the clock starts; one that fails is opened again by its
    # first request (and counted there if it fails again).
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(
            asyncio.gather(*(c.open() for c in conns), return_exceptions=True), REQUEST_TIMEOUT
        )
    try:
        await drive(conns)
    finally:
        for conn in conns:
            conn.close()
        await asyncio.sleep(0)
    return result


def process_cpu(pid: int) -> float:
    """User plus system CPU seconds of a process so far (NaN once it is gone)."""
    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return float("nan")
    return float(times.user + times.system)


def run(coro: Awaitable[Result]) -> Result:
    """Run on uvloop when it is installed (the service itself runs on it)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)  # type: ignore[arg-type]
    return uvloop.run(coro)  # type: ignore[no-any-return]


# --------------------------------------------------------------------------- wrk cross-check

WRK_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}


def wrk_capacity(target: Target, pool: list[Request], tmp: Path) -> list[str]:
    """One line per kind of request: wrk's closed-loop req/s and p99 against the server."""
    wrk = shutil.which("wrk")
    if wrk is None:
        return ["wrk capacity: skipped (wrk is not installed)"]
    lines = []
    for kind in ("known", "unknown", "session"):
        request = next((r for r in pool if r.kind == kind), None)
        if request is None:
            continue
        cmd = [wrk, "-t1", f"-c{WRK_CONNECTIONS}", f"-d{WRK_SECONDS}s", "--latency"]
        if request.method != "GET":
            body = (request.body or b"").decode()
            level = "=" * next(n for n in range(1, 99) if f"]{'=' * n}]" not in body)
            script = tmp / f"{kind}.lua"
            script.write_text(
                f'wrk.method = "{request.method}"\n'
                f"wrk.body = [{level}[{body}]{level}]\n"
                'wrk.headers["Content-Type"] = "application/json"\n'
            )
            cmd += ["-s", str(script)]
        cmd.append(target.base + request.path)
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=WRK_SECONDS + 30)
        except subprocess.TimeoutExpired:
            lines.append(f"wrk {kind:<18} timed out")
            continue
        out = proc.stdout
        rps = re.search(r"Requests/sec:\s*([\d.]+)", out)
        p99 = re.search(r"^\s*99%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.MULTILINE)
        bad = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", out)
        sock = re.search(r"Socket errors:.*", out)
        if proc.returncode != 0 or rps is None or p99 is None:
            lines.append(f"wrk {kind:<18} failed: {(proc.stderr or out).strip()[:200]}")
            continue
        lines.append(
            f"wrk {kind + ' ' + request.method:<18} closed loop {WRK_CONNECTIONS} connections "
            f"{float(rps[1]):7.0f} req/s  p99 {float(p99[1]) * WRK_UNITS[p99[2]]:6.2f} ms  "
            f"non-2xx {int(bad[1]) if bad else 0}" + (f"  ({sock[0]})" if sock else "")
        )
    return lines


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", default=os.environ.get("BUNDLE_DIR") or "models/bundle")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of each run (60)")
    parser.add_argument("--rate", type=float, default=1000.0, help="req/s of runs 1 to 3 (1000)")
    parser.add_argument("--swap-every", type=float, default=10.0, help="seconds between swaps (10)")
    parser.add_argument("--connections", type=int, default=32, help="keep-alive connections (32)")
    parser.add_argument("--p99-ms", type=float, default=25.0, help="latency goal of the search")
    parser.add_argument(
        "--search-steps", type=int, default=6, help="runs of the search after run 1 (6)"
    )
    parser.add_argument("--no-search", action="store_true", help="skip the rate search")
    parser.add_argument("--no-baseline", action="store_true", help="skip the aiohttp baseline")
    parser.add_argument("--no-wrk", action="store_true", help="skip the wrk cross-check")
    parser.add_argument(
        "--mix", default="0.6,0.2,0.2", help="shares of known users, unknown users, sessions"
    )
    parser.add_argument(
        "--against",
        type=Path,
        help="another source tree (e.g. an older commit's `git archive`): its server runs the "
        "warm-up, steady and swap runs too, each right before this tree's, labelled before/after",
    )
    parser.add_argument(
        "--rounds", type=int, default=1, help="steady runs per server, alternated (1)"
    )
    args = parser.parse_args()
    if not 1 <= args.rounds <= 20:
        raise SystemExit(f"error: --rounds {args.rounds}; expected 1 to 20")
    if args.against is not None and not (args.against / "recsys" / "service.py").is_file():
        raise SystemExit(f"error: --against {args.against}: no recsys/service.py there")
    bundle = Path(args.bundle).resolve()
    if not (bundle / "metadata.json").is_file():
        raise SystemExit(f"error: {bundle}: no bundle; run dvc repro (or pass --bundle)")
    if not (
        0 < args.seconds <= 600
        and 0 < args.rate <= 50_000
        and 1 <= args.connections <= 512
        and 0 <= args.search_steps <= 20
    ):
        raise SystemExit(
            "error: expected --seconds in (0, 600], --rate in (0, 50000], --connections in "
            "[1, 512], --search-steps in [0, 20]"
        )
    try:
        mix = tuple(float(x) for x in args.mix.split(","))
        assert len(mix) == 3 and min(mix) >= 0 and sum(mix) > 0
    except (ValueError, AssertionError):
        raise SystemExit(
            f"error: --mix {args.mix!r}; expected three shares like 0.6,0.2,0.2"
        ) from None

    token = secrets.token_hex(16)
    host, port = "127.0.0.1", free_port()
    # printed relative to the repository when inside it: figures get pasted into the docs
    shown = bundle.relative_to(ROOT) if bundle.is_relative_to(ROOT) else bundle
    workload = Workload(bundle, mix)  # type: ignore[arg-type]
    pool = workload.pool(f"{host}:{port}")
    with tempfile.TemporaryDirectory(prefix="bench-service-") as tmp:
        log = Path(tmp) / "server.log"
        server = start_server(bundle, port, token, log)
        target = Target(host, port, token, server.pid)
        others: list[tuple[str, Target]] = [("", target)]
        other_server = None
        if args.against is not None:
            other_port = free_port()
            other_log = Path(tmp) / "against.log"
            other_server = start_server(
                bundle, other_port, token, other_log, args.against.resolve()
            )
            before = Target(host, other_port, token, other_server.pid)
            others = [("before ", before), ("after ", target)]
            print(f"--against {args.against}: pid {other_server.pid} on {before.base}")
        print(
            f"bundle {shown} ({len(workload.users):,} users, {len(workload.items):,} items), "
            f"server pid {server.pid} on {target.base}, {args.connections} connections, "
            f"mix known/unknown/session {args.mix}, {len(pool)} prebuilt requests, "
            f"{args.seconds:g} s per run",
            flush=True,
        )
        try:

            def once(
                rate: float,
                swap: float = 0.0,
                client: str = "lean",
                seconds: float = 0,
                on: Target = target,
            ):
                return run(
                    run_load(
                        on,
                        pool,
                        rate,
                        seconds or args.seconds,
                        args.connections,
                        swap,
                        client,
                    )
                )

            def ok(result: Result) -> bool:
                return (
                    result.errors == 0
                    and result.pct(99) <= args.p99_ms
                    and result.achieved >= 0.95 * result.rate
                )

            for label, on in others:
                warm_up = once(
                    min(args.rate, 100), seconds=min(args.seconds, WARM_UP_SECONDS), on=on
                )
                print(warm_up.line(f"{label}warm-up"), flush=True)  # first-request costs
            for _ in range(args.rounds):  # alternated, so both see the same machine
                for label, on in others:
                    steady = once(args.rate, on=on)
                    print(steady.line(f"{label}steady"), flush=True)
            if not args.no_baseline:
                baseline_line(once, args.rate, min(args.seconds, BASELINE_SECONDS), steady)
            for label, on in others:
                swapped = once(args.rate, args.swap_every, on=on)
                print(swapped.line(f"{label}swap every {args.swap_every:g} s"), flush=True)
            if not args.no_search:
                good, bad = (args.rate, float("inf")) if ok(steady) else (0.0, args.rate)
                for _ in range(args.search_steps):
                    if bad - good < 50:
                        break
                    rate = good * 2 if bad == float("inf") else (good + bad) / 2
                    result = once(rate)
                    verdict = ok(result)
                    print(result.line(f"search {'ok' if verdict else 'over'}"), flush=True)
                    if verdict:
                        good = rate
                    else:
                        bad = rate
                print(
                    f"largest rate with p99 <= {args.p99_ms:g} ms and no errors: "
                    f"{good:.0f} req/s" + ("" if good else " (none of those tried)"),
                    flush=True,
                )
            if not args.no_wrk:
                for line in wrk_capacity(target, pool, Path(tmp)):
                    print(line, flush=True)
        finally:
            if other_server is not None:
                other_server.terminate()
                other_server.wait(timeout=15)
            server.terminate()
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                server.kill()
            text = log.read_text()
            if "Traceback" in text or "ERROR" in text:
                print("server log:\n" + text[-3000:], file=sys.stderr)


def baseline_line(once: Callable[..., Result], rate: float, seconds: float, lean: Result) -> None:
    """The aiohttp client at the same rate, and its generator CPU per request over the lean
    client's."""
    try:
        import aiohttp  # noqa: F401
    except ImportError:
        print("baseline aiohttp: skipped (aiohttp is not installed)", flush=True)
        return
    result = once(rate, client="aiohttp", seconds=seconds)
    print(result.line("baseline aiohttp"), flush=True)
    print(
        f"generator CPU per request: aiohttp {result.generator_us:.0f} us, lean "
        f"{lean.generator_us:.0f} us ({result.generator_us / lean.generator_us:.1f}x)",
        flush=True,
    )


if __name__ == "__main__":
    main()
