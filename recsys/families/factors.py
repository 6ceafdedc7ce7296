"""What implicit's matrix-factorisation families (ALS, BPR, LMF) share: float32 user and
item factors, known users scored by implicit's own top-k, similar items by cosine."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from recsys.errors import StageError
from recsys.families.base import Family, Progress, check_finite, check_rows, require, top_n_of
from recsys.ranking import top_k_unseen


class FactorFamily(Family):
    """A factor model wrapped around implicit's class of the same family.

    `_implicit(threads)` builds an unfitted implicit model with the family's scoring
    attributes; factors are set on it, so known users are scored by implicit's C top-k
    exactly as `implicit.evaluation` scores them.
    """

    USER_ARRAYS: ClassVar[tuple[str, ...]] = ("user_factors",)
    #: extra 0-d arrays saved with the factors (what scoring a session needs)
    EXTRA: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self, user_factors: np.ndarray, item_factors: np.ndarray, threads: int, **extra: float
    ) -> None:
        self.user_factors = np.ascontiguousarray(user_factors, dtype=np.float32)
        self.item_factors = np.ascontiguousarray(item_factors, dtype=np.float32)
        self.threads = threads
        self.extra = {k: float(v) for k, v in extra.items()}
        self.losses: list[float] = []
        self._model: Any | None = None
        self._normed: np.ndarray | None = None

    def _implicit(self, threads: int) -> Any:
        raise NotImplementedError

    @classmethod
    def _fit_one_thread(
        cls, build: Callable[[], Any], train: sp.csr_matrix, threads: int,
        on_iteration: Progress | None,
    ) -> Any:  # fmt: skip
        """Build an implicit SGD model (BPR, LMF) with `build` and fit it on one thread: its
        lock-free updates make the factors depend on the thread count. Reports each epoch."""
        with threadpool_limits(1, "blas"):
            model = build()
            model.fit(
                train,
                show_progress=False,
                callback=None if on_iteration is None else lambda i, *_: on_iteration(i + 1, None),
            )
        return cls(model.user_factors, model.item_factors, threads)

    @property
    def implicit_model(self) -> Any:
        if self._model is None:
            with threadpool_limits(1, "blas"):  # implicit warns about threaded BLAS otherwise
                model = self._implicit(self.threads)
            model.user_factors = self.user_factors
            model.item_factors = self.item_factors
            self._model = model
        return self._model

    @property
    def n_items(self) -> int:
        return int(self.item_factors.shape[0])

    def arrays(self) -> dict[str, np.ndarray]:
        extra = {k: np.array(v, dtype=np.float64) for k, v in self.extra.items()}
        return {"user_factors": self.user_factors, "item_factors": self.item_factors} | extra

    @classmethod
    def from_arrays(
        cls, arrays: dict[str, np.ndarray], path: Path | str, shape: tuple[int | None, int],
        threads: int,
    ) -> FactorFamily:  # fmt: skip
        n_users, n_items = shape
        require(arrays, path, "item_factors", *cls.EXTRA)
        items = arrays["item_factors"]
        check_rows(items, n_items, path, "item_factors")
        items = check_finite(items, path, "item_factors")
        if n_users is None:
            users = np.zeros((0, items.shape[1]), dtype=np.float32)
        else:
            require(arrays, path, "user_factors")
            check_rows(arrays["user_factors"], n_users, path, "user_factors")
            users = check_finite(arrays["user_factors"], path, "user_factors")
        if users.shape[1] != items.shape[1]:
            raise StageError(
                f"{path}: user_factors has {users.shape[1]} factors, item_factors {items.shape[1]}"
            )
        extra = {k: float(arrays[k]) for k in cls.EXTRA}
        return cls(users, items, threads, **extra)

    def recommend(
        self, users: np.ndarray, train: sp.csr_matrix, k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        return top_k_unseen(self.implicit_model, train, users, k)

    def similar_items(self, item: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Cosine similarity of item factors, as implicit's `similar_items` (zero-norm items
        score 0)."""
        if self._normed is None:
            norms = np.linalg.norm(self.item_factors, axis=1, keepdims=True)
            self._normed = self.item_factors / np.where(norms > 0, norms, 1).astype(np.float32)
        scores = self._normed @ self._normed[item]  # one request: no per-call BLAS limit
        return top_n_of(scores, n, np.array([item]))

    def _session_scores(self, user_vectors: np.ndarray) -> np.ndarray:
        # a request's few vectors: threadpool_limits here would cost more (about a
        # millisecond per call) than the product; the service limits BLAS once at start
        return (user_vectors.astype(np.float32) @ self.item_factors.T).astype(np.float32)


def mean_item_vectors(rows: sp.csr_matrix, item_factors: np.ndarray) -> np.ndarray:
    """Each session's weighted mean of its items' factors (sessions x factors, float32)."""
    rows = sp.csr_matrix(rows, dtype=np.float32)
    weight = np.asarray(rows.sum(axis=1), dtype=np.float32)
    weight[weight == 0] = 1
    return np.asarray(rows @ item_factors, dtype=np.float32) / weight
