"""Keep a running service on the registry's `prod` version: poll, fetch, switch, reload.

The service answers from the folder its `--bundle` names and swaps in whatever is there on
SIGHUP or POST /admin/reload, verifying it first and never failing a request (see
`recsys.service`). This module makes that folder follow the registry: point the service at
`DIR/current`, a symbolic link, and run

    recsys follow --repo GIT_URL --serving DIR [--reload URL | --pid PID]
                            [--interval SECONDS | --once]

Each poll asks GTO which version `prod` points at (`gto show recsys-bundle#prod`); a new
one is fetched with `dvc artifacts get` into `DIR/<version>`, checked with `load_bundle`,
and `DIR/current` is re-pointed at it in one atomic rename; then the service is told to
reload (POST to `--reload` with the Bearer token in $RECSYS_ADMIN_TOKEN, or SIGHUP to
`--pid`) and the answer must name the new bundle. A fetch or check that fails leaves
`current` where it was, so the service keeps the version it has. Only the serving version
and the one before it are kept on disk (a quick way back).

Exit codes (`--once`): 0 switched, 3 already on prod, 2 an error (one line).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from recsys.bundle import load_bundle
from recsys.commands import CommandParser
from recsys.errors import EXIT_USER_ERROR, StageError
from recsys.gate import fetch_champion, prod_version

EXIT_SWITCHED = 0
EXIT_CURRENT = 3
CURRENT = "current"
KEEP = 2  # versions kept on disk: the serving one and the one before it
TOKEN_ENV = "RECSYS_ADMIN_TOKEN"


def serving_version(serving: Path) -> str | None:
    """The version `serving/current` points at, None before the first fetch."""
    link = serving / CURRENT
    return os.readlink(link) if link.is_symlink() else None


def switch(serving: Path, version: str, repo: str, stage: str) -> Path:
    """Fetch `version` (the stage's) into `serving/version`, verify it, re-point `current`."""
    serving.mkdir(parents=True, exist_ok=True)
    target = serving / version
    if not target.is_dir():
        partial = serving / f".{version}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        fetch_champion(repo, stage, partial)
        load_bundle(partial)  # refuses a corrupt or incomplete bundle before anyone serves it
        partial.rename(target)
    else:
        load_bundle(target)
    tmp_link = serving / f".{CURRENT}.tmp"
    tmp_link.unlink(missing_ok=True)
    tmp_link.symlink_to(version)  # relative: the folder can move
    os.replace(tmp_link, serving / CURRENT)  # atomic: `current` is always a whole version
    _prune(serving, version)
    return target


def _prune(serving: Path, version: str) -> None:
    """Delete fetched versions but the newest KEEP (by fetch time), never `version`."""
    versions = sorted(
        (p for p in serving.iterdir() if p.is_dir() and not p.is_symlink() and p.name[0] != "."),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    for old in versions[KEEP:]:
        if old.name != version:
            shutil.rmtree(old, ignore_errors=True)


def reload_service(url: str | None, pid: int | None, expected_md5: str) -> str:
    """Ask the service to reload; return how. POST answers with the bundle it now serves,
    which must be `expected_md5`."""
    if pid is not None:
        os.kill(pid, signal.SIGHUP)
        return f"SIGHUP to pid {pid}"
    if url is None:
        return "no reload requested"
    token = os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        raise StageError(f"{TOKEN_ENV} is not set; expected the service's admin token")
    request = urllib.request.Request(
        url, method="POST", data=b"", headers={"Authorization": f"Bearer {token}"}
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=120) as response:
            body = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")[:300]
        raise StageError(f"{url}: HTTP {exc.code}: {detail}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise StageError(f"{url}: cannot reach the service ({exc})") from None
    served = body.get("bundle", {}).get("md5")
    if served != expected_md5:
        raise StageError(f"{url}: the service serves bundle {served}; expected {expected_md5}")
    return f"POST {url}"


def poll_once(args: argparse.Namespace) -> int:
    """One poll: switch and reload if the stage moved; the exit code."""
    version = prod_version(args.repo, args.stage)
    if version is None:
        raise StageError(f"{args.repo}: no version in {args.stage} yet; nothing to serve")
    if serving_version(args.serving) == version:
        print(f"follow: {args.stage} is {version}, already serving it")
        return EXIT_CURRENT
    target = switch(args.serving, version, args.repo, args.stage)
    how = reload_service(args.reload, args.pid, load_bundle(target).md5)
    print(f"follow: {args.stage} is {version}: {args.serving / CURRENT} -> {version}; {how}")
    return EXIT_SWITCHED


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = CommandParser(
        description="Keep SERVING/current on the registry's prod version and make the "
        "service reload it. Exit (--once) 0: switched, 3: already current, 2: error.",
    )
    parser.add_argument("--repo", required=True, help="git URL (or path) of the project")
    parser.add_argument("--serving", type=Path, required=True, help="folder of fetched versions")
    parser.add_argument("--stage", default="prod", help="registry stage to follow (prod)")
    how = parser.add_mutually_exclusive_group()
    how.add_argument("--reload", help="the service's /admin/reload URL (token: $" + TOKEN_ENV + ")")
    how.add_argument("--pid", type=int, help="send SIGHUP to this service process instead")
    when = parser.add_mutually_exclusive_group()
    when.add_argument("--once", action="store_true", help="poll once and exit")
    when.add_argument("--interval", type=float, default=300.0, help="seconds between polls")
    args = parser.parse_args(argv)
    if args.interval <= 0:
        parser.error(f"--interval {args.interval}; expected a positive number of seconds")
    return args


def main(argv: list[str] | None = None) -> int:
    """`recsys follow`: see the module docstring."""
    try:
        args = _parse(argv)
        if args.once:
            return poll_once(args)
        while True:  # a failed poll is reported and retried; the service keeps serving
            try:
                poll_once(args)
            except StageError as exc:
                print(f"error: {exc}", file=sys.stderr, flush=True)
            time.sleep(args.interval)
    except StageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
