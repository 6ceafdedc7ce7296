"""The model bundle: everything a recommendation service needs, and nothing else.

`models/bundle/` holds the model's serving copy (`model.npz`: the family's item-side arrays,
without per-user factors), the id maps, top-N recommendations precomputed for every known
user (training items excluded), the cold-start fallback and model (`coldstart.npz`, see
`recsys.coldstart`), the item metadata a service shows
next to each id (`items.npz`, when the catalogue has any) and `metadata.json` (model type,
params, metrics, input hashes, library versions, shapes). All arrays are pickle-free `.npz`
with fixed-width unicode ids. No timestamps anywhere: the same inputs give a byte-identical
bundle. `load_bundle` refuses a bundle whose files do not match what its metadata records.

Served from it, for every model family: a known user's precomputed list (`recommend`), an
anonymous session scored from the items it used (`recommend_session`), and the items most
similar to one item (`similar_items`).
"""

from __future__ import annotations

import bisect
import hashlib
import json
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from recsys.coldstart import ColdStart
from recsys.errors import StageError, UnknownIdError
from recsys.fallback import ExportParams, build_fallback
from recsys.families import FAMILIES, Family, load_model
from recsys.families.base import top_n_of
from recsys.io import load_npz, map_npz, md5sum, write_json, write_npz
from recsys.paths import BUNDLE

# bumped when the bundle's layout changes, so old readers refuse new bundles
# (2: any model family, `model.npz` instead of `factors.npz`, `model_type` in the metadata)
BUNDLE_FORMAT = 2
MODEL_FILE = "model.npz"


def build_bundle(
    out: Path,
    model: Family,
    train: sp.csr_matrix,
    user_ids: np.ndarray,
    item_ids: np.ndarray,
    categories: np.ndarray | None,
    params: ExportParams,
    extra_metadata: dict[str, Any],
    item_metadata: dict[str, np.ndarray] | None = None,
    coldstart: ColdStart | None = None,
    user_attributes: dict[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Write the bundle's files into the (empty) directory `out`; return the metadata.

    `model` is a fitted family (`recsys.families`); its serving copy goes in `model.npz`.
    `item_metadata` (`recsys.ids.load_item_metadata`) goes to `items.npz`, one array per
    field aligned with `item_ids`; None or empty writes no such file. `coldstart`
    (`recsys.coldstart`) goes to `coldstart.npz` with each user's group from
    `user_attributes`; its root list is then the fallback.
    """
    params.check_items(train.shape[1], "the training matrix")
    user_ids = np.asarray(user_ids, dtype=str)
    item_ids = np.asarray(item_ids, dtype=str)
    train = sp.csr_matrix(train)
    train.sort_indices()
    recs, scores = model.recommend(np.arange(train.shape[0]), train, params.top_n)
    # A user whose pairs were all held out has no history: the model's row is noise.
    personalised = np.diff(train.indptr) > 0
    recs[~personalised] = -1
    scores[~personalised] = np.nan
    if coldstart is None:
        fallback = item_ids[build_fallback(train, categories, params.fallback_size)]
    else:
        fallback = item_ids[coldstart.lists[0]]

    arrays = {
        MODEL_FILE: {"family": np.array(model.type)}
        | {k: v for k, v in model.arrays().items() if k not in model.USER_ARRAYS},
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
    if coldstart is not None:
        groups = coldstart.groups_of(user_attributes or {}, user_ids.size).astype(np.int32)
        arrays[COLDSTART_FILE] = coldstart.arrays() | {"user_group": groups}
    files_md5 = {name: write_npz(out / name, **members) for name, members in arrays.items()}
    meta = {
        "format": BUNDLE_FORMAT,
        "model_type": model.type,
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
COLDSTART_FILE = "coldstart.npz"  # optional: bundles without it serve `fallback` to newcomers
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
    """Item ids, best first, plus `source` ("personalised" or "fallback"), whether the
    user (or item) is in the bundle at all (a known user whose pairs were all held out has
    no history, so gets the fallback too) and the model's `scores` of the items when it
    scored them (None for the fallback)."""

    def __init__(
        self,
        items: Sequence[str],
        source: str,
        known: bool,
        scores: Sequence[float] | None = None,
        group: dict[str, str] | None = None,
    ) -> None:
        super().__init__(items)
        self.source = source
        self.known = known
        self.scores = None if scores is None else [float(x) for x in scores]
        self.group = group  # fallback from a cold-start model: the attributes that chose it

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
    model: Family
    items_meta: dict[str, np.ndarray] = field(default_factory=dict)  # items.npz, may be empty
    md5: str = ""  # md5 of metadata.json, which records every file's md5: the bundle's identity
    coldstart: ColdStart | None = None  # coldstart.npz, when the bundle has one
    user_group: np.ndarray | None = None  # each user's cold-start group (coldstart.npz)
    _order: np.ndarray | None = field(init=False, repr=False)
    _sorted_ids: np.ndarray = field(init=False, repr=False)
    _items: dict[str, int] = field(init=False, repr=False)
    _fallback_list: list[str] = field(init=False, repr=False)
    _item_dicts: list[dict[str, Any]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        # Users are found by binary search in the (memory-mapped) id array, which the
        # pipeline writes sorted: no per-user dict, so 10M users cost no extra RAM.
        ids = self.user_ids
        self._order = None if bool(np.all(ids[1:] > ids[:-1])) else np.argsort(ids, kind="stable")
        self._sorted_ids = ids if self._order is None else ids[self._order]  # once, not per call
        self._items = dict(zip(self.item_ids.tolist(), range(self.item_ids.size), strict=True))
        self._fallback_list = self.fallback.tolist()
        self._item_dicts = _item_dicts(self.items_meta, self.item_ids.size)

    @property
    def version(self) -> str:
        """Short label of this bundle (the first 12 hex digits of `md5`)."""
        return self.md5[:12]

    @property
    def max_n(self) -> int:
        """Largest `n` every request can be served with (precomputed top-N and fallback)."""
        cold = self.fallback.size if self.coldstart is None else self.coldstart.size
        return min(self.items.shape[1], self.fallback.size, cold)

    def check_n(self, n: int) -> None:
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n <= 0:
            raise StageError(f"n = {n!r}; expected a positive integer")
        if n > self.max_n:
            raise StageError(
                f"n = {n} exceeds the bundle's {self.max_n} precomputed recommendations; "
                f"re-export with a larger export.top_n / export.fallback_size"
            )

    def user_rows(self, user_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(row of each id, whether the bundle has it); rows of unknown ids are arbitrary.
        For batches: the search makes one aligned copy of the ids per call."""
        ids = self._sorted_ids
        query = np.asarray(user_ids, dtype=str)
        # the query in the ids' own dtype: a wider one would make numpy copy every id per
        # search; an id longer than that width cannot be in the bundle
        fits = np.char.str_len(query) <= ids.dtype.itemsize // 4
        query = query.astype(ids.dtype)
        pos = np.minimum(np.searchsorted(ids, query), ids.size - 1)
        found = fits & (ids[pos] == query)
        return (pos if self._order is None else self._order[pos]), found

    def user_row(self, user_id: str) -> int | None:
        """Row of `user_id` in the bundle, None if it is not there.

        `bisect` over the mapped ids touches about 24 of 10M ids; numpy's searchsorted
        would first copy the whole array, whose members are not 4-byte aligned in the zip.
        """
        if self._order is not None:
            rows, found = self.user_rows(np.array([user_id]))
            return int(rows[0]) if found[0] else None
        pos = bisect.bisect_left(self.user_ids, user_id)
        return pos if pos < self.user_ids.size and self.user_ids[pos] == user_id else None

    def newcomer(
        self, n: int, attributes: dict[str, str] | None = None, row: int | None = None
    ) -> Recommendations:
        """The cold-start answer: the list of the group a known user's `row` (attributes from
        the bundle) or the given `attributes` reach; the plain fallback without a model."""
        cold = self.coldstart
        if cold is None:
            return Recommendations(self._fallback_list[:n], FALLBACK, known=row is not None)
        if row is not None and self.user_group is not None:
            group = int(self.user_group[row])
        else:
            group = cold.group_of(attributes or {})
        items = self.item_ids[cold.lists[group, :n]].tolist()
        return Recommendations(items, FALLBACK, known=row is not None, group=cold.describe(group))

    def recommend(
        self, user_id: str, n: int = 10, attributes: dict[str, str] | None = None
    ) -> Recommendations:
        """Top-`n` item ids for `user_id`; the cold-start list (labelled fallback) if it has
        no history: from its attributes in the bundle, or for an unknown user the given
        `attributes` (see `newcomer`)."""
        self.check_n(n)
        row = self.user_row(str(user_id))
        if row is None or not self.personalised[row]:
            return self.newcomer(n, attributes, row)
        top = self.items[row, :n]
        filled = top >= 0
        return Recommendations(
            self.item_ids[top[filled]].tolist(),
            PERSONALISED,
            known=True,
            scores=self.scores[row, :n][filled].tolist(),
        )

    def recommend_session(
        self, item_ids: Sequence[str], n: int = 10, attributes: dict[str, str] | None = None
    ) -> tuple[Recommendations, list[str]]:
        """Top-`n` items for an anonymous session from the items it used (those excluded),
        scored by the model (ALS folds the session in; similarity families sum item
        similarities; popular ranks by popularity). Also returns the ids the bundle does not
        know, which are ignored; with no known item the answer is the cold-start list for
        `attributes` (`newcomer`)."""
        self.check_n(n)
        if isinstance(item_ids, str):
            raise StageError("item_ids must be a list of item ids, not one string")
        known: list[int] = []
        unknown: list[str] = []
        for item in item_ids:  # one session's few items, not users
            col = self._items.get(str(item))
            if col is None:
                unknown.append(str(item))
            elif col not in known:
                known.append(col)
        if not known:
            return self.newcomer(n, attributes), unknown
        cols = np.asarray(known, dtype=np.int64)
        # CSR from its arrays: the (row, col) form costs more than the scoring itself
        row = sp.csr_matrix(
            (np.ones(cols.size, dtype=np.float32), cols, np.array([0, cols.size])),
            shape=(1, self.item_ids.size),
        )
        ids, scores = top_n_of(self.model.score_session(row)[0], n, cols)
        recs = Recommendations(
            self.item_ids[ids].tolist(), PERSONALISED, known=False, scores=scores.tolist()
        )
        return recs, unknown

    def similar_items(self, item_id: str, n: int = 10) -> Recommendations:
        """The `n` items most similar to `item_id` (itself excluded), with scores: cosine of
        factors for factor models, the learned similarity row for kNN, EASE and RP3beta,
        popularity for popular. An unknown item is an UnknownIdError naming it."""
        self.check_n(n)
        col = self._items.get(str(item_id))
        if col is None:
            raise UnknownIdError(
                f"item_id {str(item_id)!r} is not in the bundle's catalogue", "item_id"
            )
        ids, scores = self.model.similar_items(col, n)
        return Recommendations(
            self.item_ids[ids].tolist(), PERSONALISED, known=True, scores=scores.tolist()
        )

    def item_metadata(self, item_ids: Sequence[str]) -> list[dict[str, Any]]:
        """For each id: the catalogue fields the bundle has for it (category, style, price,
        description; missing ones left out), {} for an id it does not know."""
        if not self._item_dicts:
            return [{} for _ in item_ids]
        rows = [self._items.get(str(item)) for item in item_ids]
        return [{} if row is None else dict(self._item_dicts[row]) for row in rows]

    def recommend_many(self, user_ids: Sequence[str], n: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """Vectorised batch: (users x n) item ids ("" in unfillable slots), fallback flags."""
        self.check_n(n)
        rows, found = self.user_rows(np.asarray(user_ids, dtype=str).reshape(-1))
        use_fallback = ~(found & self.personalised[rows])
        top = self.items[rows, :n]
        out = np.where(top >= 0, self.item_ids[np.maximum(top, 0)], "")
        out[use_fallback] = self.fallback[:n]
        if self.coldstart is not None and self.user_group is not None:
            known_cold = use_fallback & found
            groups = self.user_group[rows[known_cold]]
            out[known_cold] = self.item_ids[self.coldstart.lists[groups, :n]]
        return out, use_fallback


def load_bundle(path: Path | str = BUNDLE, snapshot_dir: Path | str | None = None) -> Bundle:
    """Load and sanity-check a bundle written by the export stage (numpy only, no pickle).

    With `snapshot_dir`, every file is first copied into a private directory made there
    (hashed while copied, so what is checked is what is served), the copy is mapped and its
    directory removed at once: the mapped files live on, unreachable by any path, so a
    `cp`, `rsync` or truncation of the bundle directory can no longer reach (or crash) the
    process that serves it. Without it, the arrays map the bundle's own files (one-shot
    readers such as `recsys recommend`).
    """
    path = Path(path)
    if not path.is_dir():
        raise StageError(f"{path}: no bundle directory; run the export stage (dvc repro)")
    if snapshot_dir is None:
        return _load_verified(path, _read_metadata(path))
    private = Path(tempfile.mkdtemp(prefix=".recsys-snapshot-", dir=snapshot_dir))
    try:
        raw = _read_metadata(path)
        metadata = _parse_metadata(path, raw)
        for name in _listed_files(path, metadata):
            _copy_verified(path / name, private / name, metadata["files_md5"][name])
        (private / "metadata.json").write_bytes(raw)
        bundle = _load_verified(private, raw, verified=True, shown=path)
    except StageError as exc:  # name the user's bundle, not the private copy
        raise StageError(str(exc).replace(str(private), str(path))) from None
    finally:
        shutil.rmtree(private, ignore_errors=True)  # mapped files outlive their names
    return bundle


def _read_metadata(path: Path) -> bytes:
    """metadata.json's bytes, read once: parsed and hashed from the same bytes."""
    try:
        return (path / "metadata.json").read_bytes()
    except FileNotFoundError:
        raise StageError(f"{path}/metadata.json: not found; run the export stage") from None
    except OSError as exc:
        raise StageError(f"{path}/metadata.json: not readable ({exc})") from None


def _parse_metadata(path: Path, raw: bytes) -> dict[str, Any]:
    try:
        metadata = json.loads(raw)
    except RecursionError:
        raise StageError(f"{path}/metadata.json: nested too deeply to be a bundle's") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StageError(f"{path}/metadata.json: not readable JSON ({exc})") from None
    if _depth(metadata) > MAX_METADATA_DEPTH:
        raise StageError(
            f"{path}/metadata.json: nested deeper than {MAX_METADATA_DEPTH} levels; "
            "not an exported bundle's, re-run export"
        )
    if not isinstance(metadata, dict) or metadata.get("format") != BUNDLE_FORMAT:
        raise StageError(
            f"{path}/metadata.json: unsupported bundle format "
            f"{metadata.get('format') if isinstance(metadata, dict) else None!r}; "
            f"expected {BUNDLE_FORMAT}"
        )
    return metadata


MAX_METADATA_DEPTH = 32  # export writes 4 levels; JSON encoders stop near 250


def _depth(obj: Any) -> int:
    """Nesting depth of parsed JSON, without recursion."""
    deepest, stack = 0, [(obj, 1)]
    while stack:
        node, level = stack.pop()
        deepest = max(deepest, level)
        if isinstance(node, dict):
            stack.extend((v, level + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, level + 1) for v in node)
    return deepest


def _copy_verified(source: Path, target: Path, expected: str) -> None:
    """Copy `source` to `target`, hashing the bytes as they pass: a file changed or
    truncated meanwhile gives another md5 and is refused."""
    digest = hashlib.md5()
    try:
        with source.open("rb") as src, target.open("wb") as dst:
            for block in iter(lambda: src.read(1 << 20), b""):
                digest.update(block)
                dst.write(block)
    except FileNotFoundError:
        raise StageError(f"{source}: missing from the bundle; re-run export (dvc repro)") from None
    if digest.hexdigest() != expected:
        raise StageError(
            f"{source}: corrupt (its md5 differs from metadata.json's); "
            "restore it with dvc checkout, or re-run export"
        )


def _load_verified(
    path: Path, raw: bytes, verified: bool = False, shown: Path | None = None
) -> Bundle:
    """The bundle in `path` whose metadata.json holds `raw`; `verified` skips the md5 check
    of files already hashed while copied. Errors name `shown` (the bundle the user gave)."""
    metadata = _parse_metadata(shown or path, raw)
    if not verified:
        _check_files(path, metadata)
    arrays: dict[str, np.ndarray] = {}
    for name, keys in _REQUIRED.items():
        loaded = map_npz(path / name)  # per-user arrays stay in the file, shared
        for key in keys:
            if key not in loaded:
                raise StageError(f"{path}/{name}: missing array '{key}'; re-run export")
            arrays[key] = loaded[key]
    _check_shapes(path, arrays)
    kind = metadata.get("model_type")
    if kind not in FAMILIES:
        raise StageError(
            f"{path}/metadata.json: model_type {kind!r}; expected one of {', '.join(FAMILIES)}"
        )
    model = load_model(path / MODEL_FILE, kind, (None, arrays["item_ids"].size), threads=1)
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
    md5 = hashlib.md5(raw).hexdigest()
    coldstart, user_group = _load_coldstart(path, metadata, arrays)
    return Bundle(
        metadata=metadata,
        model=model,
        items_meta=items_meta,
        md5=md5,
        coldstart=coldstart,
        user_group=user_group,
        **arrays,
    )


def _load_coldstart(
    path: Path, metadata: dict[str, Any], arrays: dict[str, np.ndarray]
) -> tuple[ColdStart | None, np.ndarray | None]:
    """The cold-start model and each user's group, when the bundle has them."""
    if COLDSTART_FILE not in metadata["files_md5"]:
        return None, None
    loaded = map_npz(path / COLDSTART_FILE)  # user_group: one int per user, shared pages
    cold = ColdStart.from_arrays(loaded, arrays["item_ids"].size)
    groups = loaded.get("user_group")
    if (
        groups is None
        or groups.shape != arrays["user_ids"].shape
        or (groups.size and (groups.min() < 0 or groups.max() >= cold.level.size))
    ):
        raise StageError(f"{path}/{COLDSTART_FILE}: user_group does not fit; re-run export")
    return cold, groups


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


def _listed_files(path: Path, metadata: dict[str, Any]) -> list[str]:
    """The bundle's files as metadata.json's files_md5 lists them (plain names only)."""
    recorded = metadata.get("files_md5")
    files = {*_REQUIRED, MODEL_FILE}
    if not isinstance(recorded, dict) or not files <= set(recorded):
        raise StageError(
            f"{path}/metadata.json: files_md5 must list {', '.join(sorted(files))}; re-run export"
        )
    for name, expected in recorded.items():
        if Path(str(name)).name != name or name in ("", ".", "..", "metadata.json"):
            raise StageError(
                f"{path}/metadata.json: files_md5 names {str(name)[:80]!r}; "
                "expected plain file names"
            )
        if not isinstance(expected, str):
            raise StageError(f"{path}/metadata.json: files_md5[{name!r}] is not an md5 string")
    return sorted(recorded)


def _check_files(path: Path, metadata: dict[str, Any]) -> None:
    """Every file the export wrote, unchanged: a truncated or swapped file is refused here,
    not discovered by a user as odd recommendations."""
    recorded = metadata["files_md5"]
    for name in _listed_files(path, metadata):
        file, expected = path / name, recorded[name]
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
