"""Helpers for the service tests: small real bundles and the real server in a subprocess."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
from implicit.cpu.als import AlternatingLeastSquares
from threadpoolctl import threadpool_limits

from recsys.bundle import build_bundle
from recsys.fallback import ExportParams
from recsys.families.als import AlsModel
from recsys.ids import load_item_metadata
from tests.helpers import RECSYS
from tests.s3_server import s3_dev

ROOT = Path(__file__).resolve().parents[1]
N_USERS, N_ITEMS = 120, 50
USER_IDS = np.array([f"u{i}" for i in range(N_USERS)])
ITEM_IDS = np.array([f"sku-{i:02d}" for i in range(N_ITEMS)])


def write_catalogue(path: Path) -> Path:
    lines = ["ITEM_ID,PRICE,CATEGORY_L1,CATEGORY_L2,PRODUCT_DESCRIPTION"]
    lines += [
        f"{item},{i + 0.5:.2f},cat{i % 4},style{i % 7},Item {i}" for i, item in enumerate(ITEM_IDS)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def write_bundle(out: Path, seed: int = 0, top_n: int = 10) -> Path:
    """A real ALS bundle (with item metadata) at `out`; another seed gives other answers."""
    rng = np.random.default_rng(seed)
    dense = (rng.random((N_USERS, N_ITEMS)) < 0.1).astype(np.float32)
    dense[np.arange(N_USERS), np.arange(N_USERS) % N_ITEMS] = 1
    dense[3] = 0  # u3: no history, gets the fallback
    train = sp.csr_matrix(dense)
    with threadpool_limits(1, "blas"):
        model = AlternatingLeastSquares(
            factors=6, iterations=3, random_state=seed, num_threads=1, dtype=np.float32
        )
        model.fit(train, show_progress=False)
    out.mkdir(parents=True)
    catalogue = write_catalogue(out.parent / f".{out.name}.items.csv")
    build_bundle(
        out,
        AlsModel.from_factors(
            model.user_factors, model.item_factors, 1, regularization=0.01, alpha=1.0
        ),
        train,
        USER_IDS,
        ITEM_IDS,
        np.array([f"cat{i % 4}" for i in range(N_ITEMS)]),
        ExportParams(top_n=top_n, fallback_size=max(top_n, 12)),
        {
            "params": {"als": {"alpha": 1.0, "regularization": 0.01, "factors": 6}},
            "metrics": {"map_at_k": 0.5},
            "inputs_md5": {"data/train.npz": f"train-md5-{seed}"},
        },
        load_item_metadata(catalogue, ITEM_IDS),
    )
    catalogue.unlink()
    return out


@dataclass
class Answer:
    status: int
    body: Any
    raw: bytes


class Client:
    """One keep-alive HTTP/1.1 connection to the server."""

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)

    def request(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> Answer:
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        hdrs = {"Content-Type": "application/json"} | (headers or {})
        try:
            self.conn.request(method, path, body=data, headers=hdrs)
            response = self.conn.getresponse()
            raw = response.read()
        except (ConnectionError, http.client.HTTPException):
            self.conn.close()
            raise
        try:
            parsed = json.loads(raw)
        except ValueError:
            parsed = None
        return Answer(response.status, parsed, raw)

    def get(self, path: str) -> Answer:
        return self.request("GET", path)

    def close(self) -> None:
        self.conn.close()


@dataclass
class Server:
    proc: subprocess.Popen[str]
    port: int
    log: Path

    def client(self) -> Client:
        return Client(self.port)

    def get(self, path: str) -> Answer:
        client = self.client()
        try:
            return client.get(path)
        finally:
            client.close()

    def post(self, path: str, body: Any = None, headers: dict[str, str] | None = None) -> Answer:
        client = self.client()
        try:
            return client.request("POST", path, body, headers)
        finally:
            client.close()

    def hup(self) -> None:
        self.proc.send_signal(signal.SIGHUP)

    def output(self) -> str:
        return self.log.read_text()

    def wait_health(self, status: int = 200, md5: str | None = None, timeout: float = 30) -> Answer:
        deadline = time.monotonic() + timeout
        last: Answer | None = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited {self.proc.returncode}:\n{self.output()}")
            try:
                last = self.get("/health")
                if last.status == status and (md5 is None or last.body["bundle"]["md5"] == md5):
                    return last
            except (ConnectionError, http.client.HTTPException, OSError):
                pass
            time.sleep(0.05)
        raise AssertionError(f"health never became {status} {md5}: {last}\n{self.output()}")


@contextmanager
def serve(
    bundle: Path,
    log: Path,
    token: str | None = None,
    wait: bool = True,
    args: tuple[str, ...] = (),
) -> Iterator[Server]:
    """`recsys serve [args]` on a free port, as `make serve` runs it; stopped after."""
    port = s3_dev.free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PORT": str(port), "BUNDLE_DIR": str(bundle)}
    env.pop("RECSYS_ADMIN_TOKEN", None)
    if token is not None:
        env["RECSYS_ADMIN_TOKEN"] = token
    with log.open("w") as out:
        proc = subprocess.Popen(
            [RECSYS, "serve", *args],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )
    server = Server(proc, port, log)
    try:
        if wait:
            server.wait_health(200)
        else:  # up, whatever the bundle's state
            deadline = time.monotonic() + 30
            while True:
                try:
                    server.get("/health")
                    break
                except OSError:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise AssertionError(server.output()) from None
                    time.sleep(0.05)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class Load:
    """What `steady_load` saw: requests answered, and every failure (non-200 or error)."""

    answered: int = 0
    failures: list[str] = field(default_factory=list)


@contextmanager
def steady_load(server: Server, users: list[str]) -> Iterator[Load]:
    """Recommendations for `users`, back to back on a keep-alive connection, for as long as
    the body runs (a reload or a version switch happens meanwhile); stopped and joined after."""
    load, stop = Load(), threading.Event()

    def hammer() -> None:
        client = server.client()
        i = 0
        while not stop.is_set():
            try:
                answer = client.get(f"/recommendations/{users[i % len(users)]}?n=5")
                if answer.status != 200:
                    load.failures.append(f"{answer.status} {answer.raw[:200]!r}")
                load.answered += 1
            except OSError as exc:
                load.failures.append(repr(exc))
                client = server.client()
            i += 1

    thread = threading.Thread(target=hammer)
    thread.start()
    try:
        yield load
    finally:
        stop.set()
        thread.join(timeout=30)


# One Lambda container: import the handler once, answer each event file in turn.
LAMBDA_CONTAINER = """
import json, sys
from recsys.aws_lambda import handler
for path in sys.argv[1:]:
    with open(path) as fh:
        print(json.dumps(handler(json.load(fh), None)), flush=True)
"""


def invoke_lambda(files: list[Path], **env: str) -> tuple[list[dict[str, Any]], str]:
    """The handler's answer to each event file, from one fresh process (a cold container),
    and what it logged; no BUNDLE_DIR or RECSYS_* leaks in from the caller."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("BUNDLE_DIR", "RECSYS_"))}
    proc = subprocess.run(
        [sys.executable, "-c", LAMBDA_CONTAINER, *map(str, files)],
        cwd=ROOT,
        env={**clean, "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()], proc.stderr
