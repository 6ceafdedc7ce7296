"""Recommendations for one user from the exported bundle, on the command line.

Known users get their precomputed top-N; unknown users, and users whose every pair was
held out, get the cold-start fallback, and the answer says so:

    python -m recsys.recommend USER_ID [-n N] [--bundle DIR] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import NoReturn

from recsys.bundle import load_bundle
from recsys.cli import run_stage
from recsys.errors import StageError
from recsys.paths import BUNDLE

# --------------------------------------------------------------------------- CLI


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line as one `error:` line (exit 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see --help)\n")


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = _Parser(
        prog="python -m recsys.recommend",
        description="Top-N item ids for a user from an exported bundle; unknown users get "
        "the cold-start fallback (labelled as such).",
    )
    parser.add_argument("user_id", help="external USER_ID, as in data/user_ids.csv")
    parser.add_argument("-n", type=int, default=10, help="number of items (default 10)")
    parser.add_argument("--bundle", default=str(BUNDLE), help=f"bundle directory ({BUNDLE})")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = _parse(argv)
    if args.n <= 0:
        raise StageError(f"-n {args.n}; expected a positive integer")
    bundle = load_bundle(args.bundle)
    recs = bundle.recommend(args.user_id, args.n)
    if args.json:
        answer = {"user_id": args.user_id, "source": recs.source, "known": recs.known}
        print(json.dumps(answer | {"items": list(recs)}))
        return
    if recs.is_fallback:
        why = "has no training history" if recs.known else "is not in the bundle"
        print(
            f"note: user {args.user_id!r} {why}; showing the cold-start fallback",
            file=sys.stderr,
        )
    print("\n".join(recs))


if __name__ == "__main__":
    run_stage(main)
