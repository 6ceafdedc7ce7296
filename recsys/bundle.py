"""The model bundle: everything a recommendation service needs, and nothing else.

`models/bundle/` holds the factors, the id maps, top-N recommendations precomputed for every
known user (training items excluded), the cold-start fallback, the item metadata a service
shows next to each id (`items.npz`, when the catalogue has any) and `metadata.json` (params,
metrics, input hashes, library versions, shapes). All arrays are pickle-free `.npz` with
fixed-width unicode ids, so a reader needs numpy alone. No timestamps anywhere: the same
inputs give a byte-identical bundle. `load_bundle` refuses a bundle whose files do not
match what its metadata records.
"""

from __future__ import annotations

import hashlib
import zipfile
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
    item_metadata: dict[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Write the bundle's files into the (empty) directory `out`; return the metadata.

    `model` is an implicit model holding the float32 factors (`recsys.models`).
    `item_metadata` (`recsys.ids.load_item_metadata`) goes to `items.npz`, one array per
    field aligned with `item_ids`; None or empty writes no such file.
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
    if item_metadata:
        arrays[ITEMS_FILE] = _item_arrays(item_metadata, item_ids.size)
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


ITEMS_FILE = "items.npz"
# items.npz arrays: field -> kind ("U": text, "" = unknown; "f": float64, NaN = unknown)
ITEM_FIELDS = {"category": "U", "style": "U", "price": "f", "description": "U"}


def _item_arrays(item_metadata: dict[str, np.ndarray], n_items: int) -> dict[str, np.ndarray]:
    arrays = {}
    for name, values in sorted(item_metadata.items()):
        if name not in ITEM_FIELDS:
            raise ValueError(f"item metadata field {name!r}; expected one of {list(ITEM_FIELDS)}")
        kind = ITEM_FIELDS[name]
        arr = np.asarray(values, dtype=np.float64 if kind == "f" else str)
        if arr.shape != (n_items,):
            raise ValueError(f"item metadata {name!r} has shape {arr.shape}; expected ({n_items},)")
        arrays[name] = arr
    return arrays


PERSONALISED = "personalised"
FALLBACK = "fallback"

_REQUIRED = {
    "ids.npz": ("user_ids", "item_ids"),
    "recommendations.npz": ("items", "scores", "personalised", "fallback"),
}


class Recommendations(list[str]):
    """Item ids, best first, plus `source` ("personalised" or "fallback") and whether the
    user is in the bundle at all (a known user whose pairs were all held out has no
    history, so gets the fallback too). `scores` holds the model's score of each item
    (None for the fallback, which is a ranking, not a score)."""

    def __init__(
        self,
        items: Sequence[str],
        source: str,
        known: bool,
        scores: Sequence[float] | None = None,
    ) -> None:
        super().__init__(items)
        self.source = source
        self.known = known
        self.scores: list[float] | None = None if scores is None else list(scores)

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
    item_factors: np.ndarray | None = None  # float32 items x factors (sessions, similar items)
    items_meta: dict[str, np.ndarray] = field(default_factory=dict)  # items.npz, may be empty
    md5: str = ""  # md5 of metadata.json, which records every file's md5: the bundle's identity
    _rows: dict[str, int] = field(init=False, repr=False)
    _fallback_list: list[str] = field(init=False, repr=False)
    _sorted: np.ndarray | None = field(default=None, init=False, repr=False)
    _item_rows: dict[str, int] = field(init=False, repr=False)
    _item_dicts: list[dict[str, Any]] = field(init=False, repr=False)
    _unit_items: np.ndarray | None = field(default=None, init=False, repr=False)
    _yty: np.ndarray | None = field(default=None, init=False, repr=False)
    _gram_inv: np.ndarray | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self._rows = dict(zip(self.user_ids.tolist(), range(self.user_ids.size), strict=True))
        self._fallback_list = self.fallback.tolist()
        self._item_rows = dict(zip(self.item_ids.tolist(), range(self.item_ids.size), strict=True))
        self._item_dicts = _item_dicts(self.items_meta, self.item_ids.size)
        if self.item_factors is not None:
            factors = self.item_factors.astype(np.float64)
            norms = np.linalg.norm(factors, axis=1)
            norms[norms == 0] = 1e-10  # as implicit: an all-zero item is similar to nothing
            self._unit_items = (factors / norms[:, None]).astype(np.float32)
            self._yty = factors.T @ factors
            regularization = self._als_param("regularization", 0.0)
            gram = self._yty + regularization * np.eye(factors.shape[1])
            try:  # sessions update this inverse by their few items (Woodbury), no f x f solve
                self._gram_inv = np.linalg.inv(gram)
            except np.linalg.LinAlgError:
                self._gram_inv = None

    def _als_param(self, name: str, default: float) -> float:
        return float(self.metadata.get("params", {}).get("als", {}).get(name, default))

    @property
    def version(self) -> str:
        """Short label of this bundle (the first 12 hex digits of `md5`)."""
        return self.md5[:12]

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
        keep = top >= 0
        return Recommendations(
            self.item_ids[top[keep]].tolist(),
            PERSONALISED,
            known=True,
            scores=self.scores[row, :n][keep].tolist(),
        )

    def recommend_session(
        self, item_ids: Sequence[str], n: int = 10
    ) -> tuple[Recommendations, list[str]]:
        """Top-`n` for an anonymous session from the items it touched, and the unknown ids.

        ALS fold-in, as implicit's `recommend(..., recalculate_user=True)`: the user factor
        that solves the least-squares system of a user with these items (each one unit of
        confidence, scaled by the model's alpha), then the items' scores; the session's
        own items are excluded. No known item gives the fallback.
        """
        self.check_n(n)
        rows, unknown, seen = [], [], set()
        for item in item_ids:
            row = self._item_rows.get(str(item))
            if row is None:
                unknown.append(str(item))
            elif row not in seen:
                seen.add(row)
                rows.append(row)
        if not rows or self.item_factors is None or self._yty is None:
            return Recommendations(self._fallback_list[:n], FALLBACK, known=False), unknown
        alpha = self._als_param("alpha", 1.0)
        regularization = self._als_param("regularization", 0.0)
        chosen = self.item_factors[rows].astype(np.float64)  # k x f
        b = alpha * chosen.sum(axis=0)  # one unit of confidence each, times alpha (Cui)
        weight = alpha - 1.0  # A = YtY + reg I + weight * chosen^T chosen
        k, f = chosen.shape
        user: np.ndarray | None = None
        if self._gram_inv is not None and (weight == 0 or 4 * k <= f):
            # Woodbury: A^-1 b from the precomputed (YtY + reg I)^-1 and a k x k solve, so a
            # session of a few items costs O(k f^2) instead of an f x f factorisation.
            m_inv_b = self._gram_inv @ b
            if weight == 0:
                user = m_inv_b
            else:
                m_inv_ut = self._gram_inv @ chosen.T  # f x k
                small = np.eye(k) / weight + chosen @ m_inv_ut
                try:
                    user = m_inv_b - m_inv_ut @ np.linalg.solve(small, chosen @ m_inv_b)
                except np.linalg.LinAlgError:
                    user = None
        if user is None:
            a = self._yty + regularization * np.eye(f) + weight * (chosen.T @ chosen)
            try:
                user = np.linalg.solve(a, b)
            except np.linalg.LinAlgError:
                user = np.linalg.lstsq(a, b, rcond=None)[0]
        scores = self.item_factors @ user.astype(np.float32)
        return self._top(scores, n, np.asarray(rows), known=False), unknown

    def similar_items(self, item_id: str, n: int = 10) -> Recommendations:
        """The `n` items most similar to `item_id` (cosine of item factors), itself excluded."""
        self.check_n(n)
        row = self._item_rows.get(str(item_id))
        if row is None:
            raise StageError(f"item_id {str(item_id)!r} is not in the bundle's catalogue")
        if self._unit_items is None:
            raise StageError("this bundle has no item factors; re-run export")
        scores = self._unit_items @ self._unit_items[row]
        return self._top(scores, n, np.array([row]), known=True)

    def _top(self, scores: np.ndarray, n: int, exclude: np.ndarray, known: bool) -> Recommendations:
        """Best `n` of `scores` (ties: lower item index), `exclude`d rows left out."""
        scores = np.asarray(scores, dtype=np.float32).copy()
        scores[exclude] = -np.inf
        n = min(n, scores.size - exclude.size)
        head = np.argpartition(-scores, n - 1)[:n] if n < scores.size else np.arange(scores.size)
        head = head[np.lexsort((head, -scores[head]))][:n]
        return Recommendations(
            self.item_ids[head].tolist(), PERSONALISED, known=known, scores=scores[head].tolist()
        )

    def item_metadata(self, item_ids: Sequence[str]) -> list[dict[str, Any]]:
        """For each id: the catalogue fields the bundle has for it (category, style, price,
        description; missing ones left out), {} for an id it does not know."""
        if not self._item_dicts:
            return [{} for _ in item_ids]
        rows = [self._item_rows.get(str(item)) for item in item_ids]
        return [{} if row is None else dict(self._item_dicts[row]) for row in rows]

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
    item_factors = _load_item_factors(path, arrays["item_ids"].size)
    items_meta: dict[str, np.ndarray] = {}
    if ITEMS_FILE in metadata["files_md5"]:
        items_meta = load_npz(path / ITEMS_FILE)
        bad = [
            k
            for k, v in items_meta.items()
            if k not in ITEM_FIELDS or v.shape != (arrays["item_ids"].size,)
        ]
        if bad:
            raise StageError(f"{path}/{ITEMS_FILE}: unexpected array {bad[0]!r}; re-run export")
    md5 = hashlib.md5((path / "metadata.json").read_bytes()).hexdigest()
    return Bundle(
        metadata=metadata, item_factors=item_factors, items_meta=items_meta, md5=md5, **arrays
    )


def _load_item_factors(path: Path, n_items: int) -> np.ndarray:
    """Only `item_factors` of factors.npz (numpy reads one member): users' are not served."""
    try:
        with np.load(path / "factors.npz", allow_pickle=False) as data:
            factors = data["item_factors"]
    except (KeyError, ValueError, OSError, zipfile.BadZipFile, EOFError):
        raise StageError(f"{path}/factors.npz: no readable item_factors; re-run export") from None
    if factors.ndim != 2 or factors.shape[0] != n_items or factors.dtype.kind != "f":
        raise StageError(f"{path}/factors.npz: item_factors must be items x factors floats")
    if not np.isfinite(factors).all():
        raise StageError(f"{path}/factors.npz: item_factors must be finite; re-run export")
    return np.ascontiguousarray(factors, dtype=np.float32)


def _item_dicts(items_meta: dict[str, np.ndarray], n_items: int) -> list[dict[str, Any]]:
    """One dict per item, fields in ITEM_FIELDS order, unknown values left out."""
    if not items_meta:
        return []
    columns = []
    for name in ITEM_FIELDS:
        if name in items_meta:
            values = items_meta[name].tolist()
            empty = (lambda v: v != v) if ITEM_FIELDS[name] == "f" else (lambda v: v == "")
            columns.append((name, values, empty))
    return [
        {name: values[i] for name, values, empty in columns if not empty(values[i])}
        for i in range(n_items)
    ]


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
