"""A local S3-compatible server (moto) for developing against the DVC remote offline.

`start` launches the server on 127.0.0.1 in the background, creates the bucket named in the
remote's url and points the remote at it through `.dvc/config.local` (git-ignored, never
committed), so `dvc push`, `dvc pull` and `dvc exp push` work without an AWS account.
`stop` shuts the server down and puts `.dvc/config.local` back the way it was, so real
credentials a developer keeps there survive a start/stop cycle.

Usage (from anywhere inside the repository):
    recsys s3-dev start [--port P] [--remote NAME]
    recsys s3-dev status     (exit status 0 when running, 3 when not)
    recsys s3-dev stop

The test suite imports the server helpers (`free_port`, `launch`, `wait_until_up`,
`ensure_bucket`, `terminate`) so tests and developers run the server the same way.
"""

from __future__ import annotations

import contextlib
import errno
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from recsys.commands import CommandParser

HOST = "127.0.0.1"
DEFAULT_PORT = 5055
# moto accepts any key pair unless IAM checks are switched on; these are placeholders.
ACCESS_KEY_ID = "testing"
SECRET_ACCESS_KEY = "testing"
REGION = "us-east-1"
# Remote options `start` sets in .dvc/config.local (and `stop` restores).
LOCAL_KEYS = ("endpointurl", "access_key_id", "secret_access_key")
STATE_DIR = Path(".dvc/tmp/s3-dev")  # .dvc/tmp is git-ignored by `dvc init`
READY_TIMEOUT_S = 20.0


class DevError(Exception):
    """A problem the user can fix; printed as one `error: ...` line."""


# --------------------------------------------------------------------------- server


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int) -> bool:
    """True when a server could listen on HOST:port (as the moto server will try)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Like the server itself: connections of a just-stopped server in TIME_WAIT must
        # not make the port look busy; a live listener still does.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def endpoint_for(port: int) -> str:
    return f"http://{HOST}:{port}"


def launch(port: int, log_path: Path) -> subprocess.Popen[bytes]:
    """Start `python -m moto.server` on HOST:port in its own session, logging to log_path."""
    if importlib.util.find_spec("moto") is None or importlib.util.find_spec("flask") is None:
        raise DevError("moto's server is not installed; run: pip install 'moto[server]'")
    if not port_is_free(port):
        raise DevError(f"port {port} on {HOST} is already in use; pick another with --port")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        # Own session: Ctrl-C in the developer's shell must not kill the background server.
        return subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(port)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def answers(endpoint: str) -> bool:
    """True when an HTTP server at endpoint responds to a request."""
    # No proxies: a developer's HTTP_PROXY must not intercept a request to localhost.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(endpoint + "/", timeout=1.0):
            return True
    except urllib.error.HTTPError:
        return True  # an HTTP error status is still an answer
    except (urllib.error.URLError, OSError):
        return False


def wait_until_up(
    endpoint: str, proc: subprocess.Popen[bytes], log_path: Path, timeout: float = READY_TIMEOUT_S
) -> None:
    """Block until the server answers; fail early with its last log line if it died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise DevError(
                f"the S3 server exited with code {proc.returncode}: {last_line(log_path)}"
            )
        if answers(endpoint):
            return
        time.sleep(0.1)
    terminate(proc.pid)
    raise DevError(f"the S3 server did not answer on {endpoint} within {timeout:.0f}s")


def last_line(path: Path) -> str:
    with contextlib.suppress(OSError):
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
        if lines:
            return lines[-1].strip()
    return f"see {path}"


def s3_client(endpoint: str, key: str = ACCESS_KEY_ID, secret: str = SECRET_ACCESS_KEY) -> Any:
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        region_name=REGION,
    )


def ensure_bucket(endpoint: str, bucket: str) -> bool:
    """Create the bucket unless it exists; True when it was created now."""
    client = s3_client(endpoint)
    existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
    if bucket in existing:
        return False
    client.create_bucket(Bucket=bucket)
    return True


def is_moto(pid: int) -> bool:
    """True when pid is alive and is a moto server (guards against a recycled pid)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False
    cmdline = Path(f"/proc/{pid}/cmdline")
    if cmdline.exists():
        with contextlib.suppress(OSError):
            return b"moto.server" in cmdline.read_bytes()
        return False
    proc = subprocess.run(["ps", "-p", str(pid), "-o", "command="], capture_output=True, text=True)
    return "moto.server" in proc.stdout


def terminate(pid: int, timeout: float = 5.0) -> None:
    """SIGTERM the server, SIGKILL it if it lingers; reap it when it is our child."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


# --------------------------------------------------------------------------- repo config


def repo_root(start: Path) -> Path:
    """The nearest directory at or above start that holds a `.dvc` directory."""
    for path in (start, *start.parents):
        if (path / ".dvc").is_dir():
            return path
    raise DevError("not inside a DVC repository (no .dvc directory here or above)")


def open_config(root: Path) -> Any:
    try:
        from dvc.config import Config, ConfigError
    except ImportError:
        raise DevError("dvc is not installed in this Python environment") from None
    try:
        return Config(dvc_dir=str(root / ".dvc"))
    except ConfigError as exc:
        raise DevError(f"cannot read the DVC config: {exc}") from None


def remote_name(config: Any, requested: str | None) -> str:
    name = requested or config.get("core", {}).get("remote") or "storage"
    if name not in config.get("remote", {}):
        raise DevError(
            f"no DVC remote named '{name}'; add it with: dvc remote add -d {name} s3://BUCKET/PATH"
        )
    return name


def bucket_of(config: Any, remote: str) -> str:
    url = config["remote"][remote]["url"]
    parsed = urlparse(url)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise DevError(f"remote '{remote}' url must look like s3://BUCKET/PATH, got '{url}'")
    return parsed.netloc


def set_local(root: Path, remote: str, values: dict[str, str | None]) -> None:
    """Set (or, for None, remove) remote options in .dvc/config.local."""
    config = open_config(root)
    with config.edit("local") as conf:
        section = conf["remote"].setdefault(remote, {})
        for key, value in values.items():
            if value is None:
                section.pop(key, None)
            else:
                section[key] = value
        if not section:
            del conf["remote"][remote]


def local_values(root: Path, remote: str) -> dict[str, str | None]:
    conf = open_config(root).load_one("local")
    section = conf.get("remote", {}).get(remote, {})
    return {key: section.get(key) for key in LOCAL_KEYS}


# --------------------------------------------------------------------------- state


def state_path(root: Path) -> Path:
    return root / STATE_DIR / "state.json"


def read_state(root: Path) -> dict[str, Any] | None:
    path = state_path(root)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        raise DevError(f"{path.relative_to(root)} is unreadable; delete it and retry") from None


def write_state(root: Path, state: dict[str, Any]) -> None:
    path = state_path(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    tmp.replace(path)


# --------------------------------------------------------------------------- commands


def say(line: str) -> None:
    """Print one line to stdout. A reader that went away (`recsys s3-dev start | head -1`)
    is no error: every command does its work before it prints, so the rest is dropped."""
    try:
        print(line, flush=True)
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # later prints and the exit flush go nowhere
        os.close(devnull)


def cmd_start(root: Path, port: int | None, remote_arg: str | None) -> None:
    config = open_config(root)
    state = read_state(root)
    remote = remote_name(config, remote_arg or (state or {}).get("remote"))
    bucket = bucket_of(config, remote)
    log_path = root / STATE_DIR / "server.log"
    running = bool(state and is_moto(state["pid"]))
    report: list[str] = []  # printed only once the remote points at the server

    # One remote per server: `stop` restores only the remote in the state file, so a second
    # remote would be left pointing at a dead endpoint.
    if state and remote != state["remote"]:
        raise DevError(
            f"the S3 server {'runs' if running else 'was started'} for remote "
            f"'{state['remote']}', not '{remote}'; run `recsys s3-dev stop` first"
        )
    if state and running:
        if port is not None and port != state["port"]:
            raise DevError(
                f"already running on port {state['port']}; run `recsys s3-dev stop` first"
            )
        endpoint = state["endpoint"]
        report.append(f"s3-dev: already running (pid {state['pid']}) at {endpoint}")
    else:
        port = DEFAULT_PORT if port is None else port
        endpoint = endpoint_for(port)
        proc = launch(port, log_path)
        try:
            wait_until_up(endpoint, proc, log_path)
            # Keep the values from before the first start: after a crash config.local still
            # holds ours, and those must not become the ones `stop` restores.
            saved = state["saved"] if state else local_values(root, remote)
            state = {"pid": proc.pid, "port": port, "endpoint": endpoint, "remote": remote}
            state["saved"] = saved
            write_state(root, state)
        except BaseException:
            # Not in the state file yet, so `stop` could not find it: never leave it behind.
            terminate(proc.pid)
            raise
        report.append(f"s3-dev: started moto S3 server (pid {proc.pid}) at {endpoint}")
        report.append(f"s3-dev: log: {log_path.relative_to(root)}")

    created = ensure_bucket(endpoint, bucket)
    report.append(f"s3-dev: bucket '{bucket}' {'created' if created else 'exists'}")
    # Before anything is printed: a server left running without this config would send
    # the next `dvc push` to the real AWS.
    set_local(
        root,
        remote,
        {
            "endpointurl": endpoint,
            "access_key_id": ACCESS_KEY_ID,
            "secret_access_key": SECRET_ACCESS_KEY,
        },
    )
    report += [
        f"s3-dev: remote '{remote}' now uses it through .dvc/config.local "
        "(endpointurl, access_key_id, secret_access_key); `recsys s3-dev stop` undoes this",
        "# for other tools (aws cli, boto3) or dvc without .dvc/config.local:",
        f"export AWS_ENDPOINT_URL_S3={endpoint}",
        f"export AWS_ACCESS_KEY_ID={ACCESS_KEY_ID}",
        f"export AWS_SECRET_ACCESS_KEY={SECRET_ACCESS_KEY}",
        f"export AWS_DEFAULT_REGION={REGION}",
    ]
    for line in report:
        say(line)


def cmd_stop(root: Path) -> None:
    state = read_state(root)
    if state is None:
        say("s3-dev: not running (nothing to stop)")
        return
    pid = state["pid"]
    if is_moto(pid):
        terminate(pid)
        report = [f"s3-dev: stopped the S3 server (pid {pid})"]
    else:
        report = [f"s3-dev: the S3 server (pid {pid}) was not running"]
    remote = state["remote"]
    ours = {"endpointurl": state["endpoint"]}
    ours.update(access_key_id=ACCESS_KEY_ID, secret_access_key=SECRET_ACCESS_KEY)
    current = local_values(root, remote)
    # Restore only what still holds our value: an edit made meanwhile is the user's.
    restore = {k: state["saved"].get(k) for k in LOCAL_KEYS if current.get(k) == ours[k]}
    if restore:
        set_local(root, remote, restore)
        report.append(f"s3-dev: restored .dvc/config.local for remote '{remote}'")
    state_path(root).unlink()
    for line in report:
        say(line)


EXIT_NOT_RUNNING = 3  # as LSB init scripts' `status`: scripts can test `recsys s3-dev status`


def cmd_status(root: Path) -> int:
    state = read_state(root)
    if state and is_moto(state["pid"]) and answers(state["endpoint"]):
        say(f"s3-dev: running (pid {state['pid']}) at {state['endpoint']}")
        return 0
    say("s3-dev: not running")
    return EXIT_NOT_RUNNING


def main(argv: list[str] | None = None) -> int:
    parser = CommandParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    start = sub.add_parser("start", help="start the server and point the remote at it")
    start.add_argument("--port", type=int, help=f"port on {HOST} (default {DEFAULT_PORT})")
    start.add_argument("--remote", help="DVC remote to point at it (default: the default one)")
    sub.add_parser("stop", help="stop the server and restore .dvc/config.local")
    sub.add_parser(
        "status", help=f"say whether the server runs (exit 0, or {EXIT_NOT_RUNNING} when not)"
    )
    args = parser.parse_args(argv)
    try:
        root = repo_root(Path.cwd())
        if args.command == "start":
            if args.port is not None and not 0 < args.port < 65536:
                raise DevError(f"--port must be between 1 and 65535, got {args.port}")
            cmd_start(root, args.port, args.remote)
        elif args.command == "stop":
            cmd_stop(root)
        else:
            return cmd_status(root)
    except DevError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # boto/dvc errors: one line, not a traceback
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0
