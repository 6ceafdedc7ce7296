"""The one interface every model family implements, and the scoring helpers they share.

evaluate, export, the bundle and `recsys.recommend` only ever talk to a `Family`: fit it on
the training matrix, save it to a pickle-free `.npz` and load it back, score known users
(top-k excluding their training items), score an anonymous session (a list of items a user
the model has never seen has just used) and list the items most similar to one item.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import scipy.sparse as sp

from recsys.errors import StageError
from recsys.io import write_npz
from recsys.paths import TRAIN

# Dense score batches hold at most this many cells (64 MiB of float32), so scoring memory
# does not grow with the number of users.
BATCH_CELLS = 1 << 24

Progress = Callable[[int, float | None], None]


class Family(ABC):
    """A fitted model of one family (ALS, EASE, ...), ready to score.

    Subclasses set `type` (the `model.type` value and params section name) and `Params`
    (a frozen dataclass with `from_section`), and list in `USER_ARRAYS` the saved arrays
    that only scoring known users needs (the bundle leaves them out).
    """

    type: ClassVar[str]
    Params: ClassVar[Any]
    USER_ARRAYS: ClassVar[tuple[str, ...]] = ()
    # popular has no knobs: its params section may be empty or missing
    OPTIONAL_SECTION: ClassVar[bool] = False
    # the train stage passes `fit` the catalogue's features as `items=` (rerank)
    ITEM_FEATURES: ClassVar[bool] = False

    #: training loss per iteration, where the family reports one (ALS)
    losses: list[float]

    # ------------------------------------------------------------------ fit / save / load

    @staticmethod
    def iterations(params: Any) -> int:
        """Progress steps `fit` reports (1 for closed-form families)."""
        return int(getattr(params, "iterations", 1))

    @classmethod
    def preflight(cls, shape: tuple[int, int], params: Any, threads: int) -> str | None:
        """Before any work: raise StageError when the fit cannot succeed (e.g. memory), or
        return a one-line warning when it will be slow (None otherwise)."""
        return None

    @classmethod
    @abstractmethod
    def fit(
        cls,
        train: sp.csr_matrix,
        params: Any,
        threads: int,
        on_iteration: Progress | None = None,
    ) -> Family:
        """Fit on the users x items confidence matrix (float32 CSR)."""

    @abstractmethod
    def arrays(self) -> dict[str, np.ndarray]:
        """Everything `save` writes, as named numpy arrays (no objects, no pickle)."""

    @classmethod
    @abstractmethod
    def from_arrays(
        cls, arrays: dict[str, np.ndarray], path: Path | str, shape: tuple[int | None, int],
        threads: int,
    ) -> Family:  # fmt: skip
        """Rebuild from `arrays()` as loaded from `path`; `shape` is (users or None, items).

        users None: the serving copy without `USER_ARRAYS` (session and similar items only).
        Inconsistent arrays raise StageError naming `path`.
        """

    def save(self, path: Path | str, serving: bool = False) -> str:
        """Write the model (or its serving copy) as a deterministic `.npz`; returns its md5."""
        arrays = self.arrays()
        if serving:
            arrays = {k: v for k, v in arrays.items() if k not in self.USER_ARRAYS}
        return write_npz(path, family=np.array(self.type), **arrays)

    # ------------------------------------------------------------------ scoring

    @property
    @abstractmethod
    def n_items(self) -> int:
        """Items (columns of the training matrix) the model scores."""

    @abstractmethod
    def recommend(
        self, users: np.ndarray, train: sp.csr_matrix, k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k items for known users (row indices `users` of the users x items `train`),
        excluding their training items: int32 ids and float32 scores, users x k, best
        first; slots that cannot be filled hold -1 / NaN."""

    @abstractmethod
    def score_session(self, rows: sp.csr_matrix) -> np.ndarray:
        """Scores over all items (sessions x items, float32) for users the model has never
        seen, each given as a row of the items they used; NaN where the model has no
        evidence for an item (sparse similarity families)."""

    @abstractmethod
    def similar_items(self, item: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The `n` items most similar to `item` (itself excluded), best first: int32 ids and
        float32 scores, possibly fewer than `n`."""

    @property
    def implicit_model(self) -> Any | None:
        """The equivalent implicit model, where one exists, for `ranking_metrics_at_k`."""
        return None


# ---------------------------------------------------------------------- shared helpers


def check_train(train: sp.csr_matrix, path: Path | str = TRAIN) -> sp.csr_matrix:
    """The training matrix as float32, refusing one no family can learn from (no pairs,
    non-finite or negative confidences) with a message naming the file."""
    if train.nnz == 0:
        raise StageError(f"{path}: no training pairs; check mask.fraction and the input data")
    if not np.isfinite(train.data).all():
        raise StageError(f"{path}: non-finite confidences; re-run the confidence stage")
    if (train.data < 0).any():
        raise StageError(f"{path}: negative confidences; expected values > 0")
    return sp.csr_matrix(train, dtype=np.float32)


def loss_csv(losses: list[float]) -> str:
    """CSV iteration,loss (1-based iterations); 8 significant digits keep it diff-stable."""
    lines = ["iteration,loss"] + [f"{i},{loss:.8g}" for i, loss in enumerate(losses, 1)]
    return "\n".join(lines) + "\n"


def require(arrays: dict[str, np.ndarray], path: Path | str, *keys: str) -> None:
    """Refuse a model file missing any of `keys`, naming it."""
    for key in keys:
        if key not in arrays:
            raise StageError(f"{path}: missing array '{key}'; re-run the train stage")


def check_finite(arr: np.ndarray, path: Path | str, key: str) -> np.ndarray:
    """Finite floats as float32, or a StageError naming the file and array."""
    if not np.issubdtype(arr.dtype, np.floating) or not np.isfinite(arr).all():
        raise StageError(f"{path}: {key} must hold finite floats; re-run the train stage")
    return arr.astype(np.float32, copy=False)


def check_rows(arr: np.ndarray, expected: int | None, path: Path | str, key: str) -> None:
    """`arr` has `expected` rows (None: any), else a StageError telling how to fix it."""
    if arr.ndim != 2 or (expected is not None and arr.shape[0] != expected):
        raise StageError(
            f"{path}: {key} has shape {arr.shape}; expected {expected} rows to match the "
            "training matrix; re-run dvc repro"
        )


def binary(matrix: sp.spmatrix) -> sp.csr_matrix:
    """float32 1.0 where a (row, column) pair is stored with a non-zero value."""
    m = sp.csr_matrix(matrix, dtype=np.float32, copy=True)
    m.sum_duplicates()
    m.data = (m.data != 0).astype(np.float32)
    m.eliminate_zeros()
    return m


def batches(n_rows: int, n_items: int) -> Iterator[slice]:
    """Row slices whose dense (rows x items) score block stays within BATCH_CELLS."""
    size = max(1, BATCH_CELLS // max(1, n_items))
    for start in range(0, n_rows, size):
        yield slice(start, min(start + size, n_rows))


def dense_scores(scores: sp.spmatrix | np.ndarray, fill: float) -> np.ndarray:
    """A float32 dense block; entries a sparse product never reached get `fill`."""
    if not sp.issparse(scores):
        return np.asarray(scores, dtype=np.float32)
    s = sp.csr_matrix(scores)
    out = np.full(s.shape, fill, dtype=np.float32)
    rows = np.repeat(np.arange(s.shape[0]), np.diff(s.indptr))
    out[rows, s.indices] = s.data
    return out


def top_k_dense(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k columns per row of a dense float32 block, best first; -inf entries never count.

    Ties go to the lower column index, whatever numpy's partition does, so lists are the
    same on every run: everything above the k-th largest value is kept, then the lowest-
    index columns equal to it. Vectorised over rows; returns (-1, NaN) in empty slots.
    """
    n_rows, n_items = scores.shape
    ids = np.full((n_rows, k), -1, dtype=np.int32)
    vals = np.full((n_rows, k), np.nan, dtype=np.float32)
    width = min(k, n_items)
    if n_rows == 0 or width == 0:
        return ids, vals
    kth = -np.partition(-scores, width - 1, axis=1)[:, width - 1]
    above = scores > kth[:, None]
    tied = scores == kth[:, None]
    need = width - above.sum(axis=1)
    take = above | (tied & (np.cumsum(tied, axis=1) <= need[:, None]))
    rows, cols = np.nonzero(take)  # exactly `width` per row, columns ascending
    cols = cols.reshape(n_rows, width)
    picked = scores[rows, cols.ravel()].reshape(n_rows, width)
    order = np.argsort(-picked, axis=1, kind="stable")  # ties keep the lower column first
    cols = np.take_along_axis(cols, order, axis=1)
    picked = np.take_along_axis(picked, order, axis=1)
    ok = np.isfinite(picked)
    ids[:, :width] = np.where(ok, cols, -1)
    vals[:, :width] = np.where(ok, picked, np.nan)
    return ids, vals


def exclude(block: np.ndarray, rows: sp.csr_matrix) -> np.ndarray:
    """Set each row's stored items (e.g. its training items) to -inf, in place."""
    r = np.repeat(np.arange(rows.shape[0]), np.diff(rows.indptr))
    block[r, rows.indices] = -np.inf
    return block


def top_n_of(scores: np.ndarray, n: int, skip: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The best `n` finite scores of one vector, leaving out the indices `skip`."""
    block = np.where(np.isfinite(scores), scores, -np.inf).astype(np.float32)[None, :]
    block[0, np.asarray(skip, dtype=np.int64)] = -np.inf
    ids, vals = top_k_dense(block, n)
    keep = ids[0] >= 0
    return ids[0][keep], vals[0][keep]
