"""The model bundle: everything a recommendation service needs, and nothing else.

`models/bundle/` holds the factors, the id maps, top-N recommendations precomputed for every
known user (training items excluded), the cold-start fallback and `metadata.json` (params,
metrics, input hashes, library versions, shapes). All arrays are pickle-free `.npz` with
fixed-width unicode ids, so a reader needs numpy alone. No timestamps anywhere: the same
inputs give a byte-identical bundle. `load_bundle` refuses a bundle whose files do not
match what its metadata records.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from recsys.errors import StageError
from recsys.fallback import build_fallback
from recsys.io import load_npz, md5sum, read_json, write_json, write_npz
from recsys.params import Section
from recsys.paths import BUNDLE
from recsys.ranking import top_k_unseen

BUNDLE_FORMAT = 1  # bumped when the bundle's layout changes, so old readers refuse new bundles


@dataclass(frozen=True)
class ExportParams:
    """`export:` params."""

    top_n: int
    fallback_size: int

    @classmethod
    def from_section(cls, s: Section) -> ExportParams:
        return cls(top_n=s.int("top_n", min=1), fallback_size=s.int("fallback_size", min=1))

    def check_items(self, n_items: int, source: Path | str) -> None:
        """Refuse a top-N longer than the catalogue (`source` lists the items) before any work:
        it can never be filled, and its users x top_n arrays could exhaust memory."""
        if self.top_n > n_items:
            raise StageError(
                f"params.yaml: export.top_n = {self.top_n}; expected <= {n_items:,}, the "
                f"number of items in {source}"
            )


def build_bundle(
    out: Path,
    model: Any,
    train: sp.csr_matrix,
    user_ids: np.ndarray,
    item_ids: np.ndarray,
    categories: np.ndarray | None,
    params: ExportParams,
    extra_metadata: dict[str, Any],
) -> dict[str, Any]:
    """Write the bundle's files into the (empty) directory `out`; return the metadata.

    `model` is an implicit model holding the float32 factors (`recsys.models`).
    """
    params.check_items(train.shape[1], "the training matrix")
    user_ids = np.asarray(user_ids, dtype=str)
    item_ids = np.asarray(item_ids, dtype=str)
    train = sp.csr_matrix(train)
    train.sort_indices()
    recs, scores = top_k_unseen(model, train, np.arange(train.shape[0]), params.top_n)
    # A user whose pairs were all held out has no history: the model's row is noise.
    personalised = np.diff(train.indptr) > 0
    recs[~personalised] = -1
    scores[~personalised] = np.nan
    fallback = item_ids[build_fallback(train, categories, params.fallback_size)]

    arrays = {
        "factors.npz": {"user_factors": model.user_factors, "item_factors": model.item_factors},
        "ids.npz": {"user_ids": user_ids, "item_ids": item_ids},
        "recommendations.npz": {
            "items": recs,
            "scores": scores,
            "personalised": personalised,
            "fallback": fallback,
        },
    }
    files_md5 = {name: write_npz(out / name, **members) for name, members in arrays.items()}
    meta = {
        "format": BUNDLE_FORMAT,
        "top_n": params.top_n,
        "fallback_size": int(fallback.size),
        "users": int(user_ids.size),
        "items": int(item_ids.size),
        "personalised_users": int(personalised.sum()),
        "arrays": {
            f"{name}:{key}": {"shape": list(arr.shape), "dtype": arr.dtype.str}
            for name, members in arrays.items()
            for key, arr in members.items()
        },
        "files_md5": files_md5,
    } | extra_metadata
    write_json(out / "metadata.json", meta)
    return meta


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
    _check_files(path, metadata)
    arrays: dict[str, np.ndarray] = {}
    for name, keys in _REQUIRED.items():
        loaded = load_npz(path / name)
        for key in keys:
            if key not in loaded:
                raise StageError(f"{path}/{name}: missing array '{key}'; re-run export")
            arrays[key] = loaded[key]
    _check_shapes(path, arrays)
    return Bundle(metadata=metadata, **arrays)


def _check_files(path: Path, metadata: dict[str, Any]) -> None:
    """Every file the export wrote, unchanged: a truncated or swapped file is refused here,
    not discovered by a user as odd recommendations."""
    recorded = metadata.get("files_md5")
    files = {*_REQUIRED, "factors.npz"}
    if not isinstance(recorded, dict) or not files <= set(recorded):
        raise StageError(
            f"{path}/metadata.json: files_md5 must list {', '.join(sorted(files))}; re-run export"
        )
    for name, expected in sorted(recorded.items()):
        file = path / Path(str(name)).name
        if not file.is_file():
            raise StageError(f"{file}: missing from the bundle; re-run export (dvc repro)")
        if md5sum(file) != expected:
            raise StageError(
                f"{file}: corrupt (its md5 differs from metadata.json's); "
                "restore it with dvc checkout, or re-run export"
            )


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
