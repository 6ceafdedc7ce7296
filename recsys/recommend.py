"""Recommendations from the exported bundle, on the command line.

Known users get their precomputed top-N; unknown users, and users whose every pair was
held out, get the cold-start fallback, and the answer says so. `--items` scores an
anonymous session (items a visitor has just used) with the model, `--similar` lists the
items most similar to one item:

    recsys recommend USER_ID [-n N] [--bundle DIR] [--json]
    recsys recommend --items ITEM_ID [ITEM_ID ...] [-n N] [--bundle DIR] [--json]
    recsys recommend --similar ITEM_ID [-n N] [--bundle DIR] [--json]
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from recsys.bundle import Recommendations, load_bundle
from recsys.cli import run_stage
from recsys.commands import CommandParser
from recsys.errors import StageError
from recsys.paths import BUNDLE

if TYPE_CHECKING:
    from argparse import Namespace

# --------------------------------------------------------------------------- CLI


def _parse(argv: Sequence[str] | None) -> Namespace:
    parser = CommandParser(
        description="Top-N item ids for a user, an anonymous session (--items) or similar "
        "items (--similar) from an exported bundle; unknown users get the cold-start "
        "fallback (labelled as such).",
    )
    parser.add_argument("user_id", nargs="?", help="external USER_ID, as in data/user_ids.csv")
    parser.add_argument(
        "--items", nargs="+", metavar="ITEM_ID", help="an anonymous session: items just used"
    )
    parser.add_argument("--similar", metavar="ITEM_ID", help="items most similar to this one")
    parser.add_argument("-n", type=int, default=10, help="number of items (default 10)")
    parser.add_argument("--bundle", default=str(BUNDLE), help=f"bundle directory ({BUNDLE})")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    return parser.parse_args(argv)


def _answer(recs: Recommendations) -> dict[str, Any]:
    out: dict[str, Any] = {"source": recs.source, "items": list(recs)}
    if recs.scores is not None:
        out["scores"] = recs.scores
    return out


def main(argv: Sequence[str] | None = None) -> None:
    args = _parse(argv)
    asked = [args.user_id is not None, args.items is not None, args.similar is not None]
    if sum(asked) != 1:
        raise StageError(
            "expected one of: a user_id, --items ITEM_ID [ITEM_ID ...], --similar ITEM_ID"
        )
    if args.n <= 0:
        raise StageError(f"-n {args.n}; expected a positive integer")
    bundle = load_bundle(args.bundle)
    if args.items is not None:
        recs, unknown = bundle.recommend_session(args.items, args.n)
        answer = {"items_given": args.items, "unknown_items": unknown} | _answer(recs)
        if unknown and not args.json:
            print(f"note: not in the bundle, ignored: {' '.join(unknown)}", file=sys.stderr)
        if recs.is_fallback and not args.json:
            print("note: no known item; showing the cold-start fallback", file=sys.stderr)
    elif args.similar is not None:
        recs = bundle.similar_items(args.similar, args.n)
        answer = {"item_id": args.similar} | _answer(recs)
    else:
        recs = bundle.recommend(args.user_id, args.n)
        answer = {"user_id": args.user_id, "known": recs.known} | _answer(recs)
        if recs.is_fallback and not args.json:
            why = "has no training history" if recs.known else "is not in the bundle"
            print(
                f"note: user {args.user_id!r} {why}; showing the cold-start fallback",
                file=sys.stderr,
            )
    if args.json:
        print(json.dumps(answer))
        return
    print("\n".join(recs))


if __name__ == "__main__":
    run_stage(main)
