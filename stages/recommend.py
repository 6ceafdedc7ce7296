"""Serve recommendations from an exported bundle (`models/bundle/`).

Known users get their precomputed top-N (a dict lookup and a row slice, microseconds);
unknown users, and users whose every pair was held out, get the cold-start fallback, and
the answer says so. Usable as a library (`load_bundle(...).recommend(user_id, n)`) or as
a CLI:

    python -m stages.recommend USER_ID [-n N] [--bundle DIR] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from stages.common import BUNDLE, BUNDLE_FORMAT, StageError, load_npz, read_json, run_stage

PERSONALISED = "personalised"
FALLBACK = "fallback"

_REQUIRED = {
    "ids.npz": ("user_ids", "item_ids"),
    "recommendations.npz": ("items", "scores", "personalised", "fallback"),
}


class Recommendations(list[str]):
    """Item ids, best first, plus `source` ("personalised" or "fallback") and whether the
    user is in the bundle at all (a known user whose pairs were all held out has no
    history, so gets the fallback too)."""

    def __init__(self, items: Sequence[str], source: str, known: bool) -> None:
        super().__init__(items)
        self.source = source
        self.known = known

    @property
    def is_fallback(self) -> bool:
        return self.source == FALLBACK


@dataclass
class Bundle:
    """An exported bundle held in memory; build with `load_bundle`."""

    user_ids: np.ndarray
    item_ids: np.ndarray
    items: np.ndarray
    scores: np.ndarray
    personalised: np.ndarray
    fallback: np.ndarray
    metadata: dict[str, Any]
    _rows: dict[str, int] = field(init=False, repr=False)
    _fallback_list: list[str] = field(init=False, repr=False)
    _sorted: np.ndarray | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self._rows = dict(zip(self.user_ids.tolist(), range(self.user_ids.size), strict=True))
        self._fallback_list = self.fallback.tolist()

    @property
    def max_n(self) -> int:
        """Largest `n` every request can be served with (precomputed top-N and fallback)."""
        return min(self.items.shape[1], self.fallback.size)

    def check_n(self, n: int) -> None:
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n <= 0:
            raise StageError(f"n = {n!r}; expected a positive integer")
        if n > self.max_n:
            raise StageError(
                f"n = {n} exceeds the bundle's {self.max_n} precomputed recommendations; "
                f"re-export with a larger export.top_n / export.fallback_size"
            )

    def recommend(self, user_id: str, n: int = 10) -> Recommendations:
        """Top-`n` item ids for `user_id`; the fallback (labelled) if it has no history."""
        self.check_n(n)
        row = self._rows.get(str(user_id))
        if row is None or not self.personalised[row]:
            return Recommendations(self._fallback_list[:n], FALLBACK, known=row is not None)
        top = self.items[row, :n]
        return Recommendations(self.item_ids[top[top >= 0]].tolist(), PERSONALISED, known=True)

    def recommend_many(self, user_ids: Sequence[str], n: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """Vectorised batch: (users x n) item ids ("" in unfillable slots), fallback flags."""
        self.check_n(n)
        query = np.asarray(user_ids, dtype=str).reshape(-1)
        if self._sorted is None:  # built on first batch call; single lookups use the dict
            self._sorted = np.argsort(self.user_ids, kind="stable")
        pos = np.searchsorted(self.user_ids[self._sorted], query)
        rows = self._sorted[np.minimum(pos, self._sorted.size - 1)]
        use_fallback = ~((self.user_ids[rows] == query) & self.personalised[rows])
        top = self.items[rows, :n]
        out = np.where(top >= 0, self.item_ids[np.maximum(top, 0)], "")
        out[use_fallback] = self.fallback[:n]
        return out, use_fallback


def load_bundle(path: Path | str = BUNDLE) -> Bundle:
    """Load and sanity-check a bundle written by the export stage (numpy only, no pickle)."""
    path = Path(path)
    if not path.is_dir():
        raise StageError(f"{path}: no bundle directory; run the export stage (dvc repro)")
    metadata = read_json(path / "metadata.json")  # a missing or broken file is a StageError
    if not isinstance(metadata, dict) or metadata.get("format") != BUNDLE_FORMAT:
        raise StageError(
            f"{path}/metadata.json: unsupported bundle format "
            f"{metadata.get('format') if isinstance(metadata, dict) else None!r}; "
            f"expected {BUNDLE_FORMAT}"
        )
    arrays: dict[str, np.ndarray] = {}
    for name, keys in _REQUIRED.items():
        loaded = load_npz(path / name)
        for key in keys:
            if key not in loaded:
                raise StageError(f"{path}/{name}: missing array '{key}'; re-run export")
            arrays[key] = loaded[key]
    _check_shapes(path, arrays)
    return Bundle(metadata=metadata, **arrays)


def _check_shapes(path: Path, a: dict[str, np.ndarray]) -> None:
    n_users, n_items = a["user_ids"].size, a["item_ids"].size
    problems = [
        (a["user_ids"].dtype.kind != "U" or a["user_ids"].ndim != 1, "user_ids: 1-D unicode"),
        (a["item_ids"].dtype.kind != "U" or a["item_ids"].ndim != 1, "item_ids: 1-D unicode"),
        (a["items"].ndim != 2 or a["items"].shape[0] != n_users, "items: (users, top_n)"),
        (a["items"].dtype.kind != "i", "items: integer"),
        (a["scores"].shape != a["items"].shape, "scores: same shape as items"),
        (a["personalised"].shape != (n_users,), "personalised: one flag per user"),
        (a["fallback"].dtype.kind != "U" or a["fallback"].ndim != 1, "fallback: 1-D unicode"),
        (a["fallback"].size == 0, "fallback: at least one item"),
        (n_users == 0, "user_ids: at least one user"),
    ]
    for bad, expected in problems:
        if bad:
            raise StageError(f"{path}: inconsistent bundle, expected {expected}; re-run export")
    if a["items"].size and (a["items"].max() >= n_items or a["items"].min() < -1):
        raise StageError(f"{path}: items holds indices outside the catalogue; re-run export")


# --------------------------------------------------------------------------- CLI


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line as one `error:` line (exit 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see --help)\n")


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = _Parser(
        prog="python -m stages.recommend",
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
