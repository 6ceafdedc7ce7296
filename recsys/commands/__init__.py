"""`recsys`: the one command line for what users run besides `dvc`.

    recsys COMMAND [ARGS...]        recsys COMMAND --help

Each command lives in its own module with a `main(argv) -> int | None`; this module only
dispatches, importing the command it runs and nothing else, so `recsys --help` is instant.
Exit codes are shared: 0 ok, 1 a check that failed (check-repro), 2 a user error shown as
one `error: ...` line, 3 nothing to do (gate kept the champion, follow is current, s3-dev is
not running), 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import NoReturn

from recsys.errors import EXIT_USER_ERROR, StageError

# name -> (module whose `main(argv)` runs it, one line for `recsys --help`)
COMMANDS: dict[str, tuple[str, str]] = {
    "compare": (
        "recsys.commands.compare",
        "compare two runs (revisions or experiments): metrics, params, paired bootstrap",
    ),
    "report": ("recsys.commands.report", "the pull-request report of a change, in Markdown"),
    "check-repro": (
        "recsys.commands.check_repro",
        "CI gate: committed dvc.lock and metrics/ match the reproduction",
    ),
    "serve": ("recsys.service", "serve a bundle over HTTP (JSON)"),
    "recommend": ("recsys.recommend", "recommendations from a bundle, on the command line"),
    "s3-dev": ("recsys.commands.s3_dev", "a local S3-compatible server for the DVC remote"),
    "fidelity": ("recsys.commands.fidelity", "the synthetic shop next to the reference figures"),
    "gate": (
        "recsys.gate",
        "champion vs challenger on the same users; promote with GTO when the rule holds",
    ),
    "follow": ("recsys.follow", "keep a served folder on the registry's prod version"),
}


class CommandParser(argparse.ArgumentParser):
    """argparse that reports a bad command line as one `error:` line and exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USER_ERROR, f"error: {message} (see `{self.prog} --help`)\n")


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {summary}" for name, (_, summary) in COMMANDS.items()]
    return (
        "usage: recsys COMMAND [ARGS...]\n\n"
        "The recsys-dvc tools (the pipeline itself runs with `dvc repro`).\n\n"
        "commands:\n" + "\n".join(lines) + "\n\n`recsys COMMAND --help` describes one command.\n"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run `recsys COMMAND ARGS...`; the exit code is the command's."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        sys.stdout.write(usage())
        return 0 if args else EXIT_USER_ERROR
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(
            f"error: unknown command {name!r}; expected one of {', '.join(COMMANDS)}",
            file=sys.stderr,
        )
        return EXIT_USER_ERROR
    module = importlib.import_module(COMMANDS[name][0])
    sys.argv[0] = f"recsys {name}"  # argparse's default prog, in usage and error lines
    try:
        return module.main(rest) or 0
    except StageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `recsys recommend ... | head -1`
        return 0
