"""Most popular: every user gets the items with the most distinct training users.

The same ranking as evaluate's baseline (`recsys.ranking.popularity_ranking`), as a family of
its own so a sweep can put it in the same table; its `popular:` params section is empty.
A session or a similar-items query gets the same list (minus the items given).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from recsys.errors import StageError
from recsys.families.base import Family, Progress, binary, require, top_n_of
from recsys.params import Section
from recsys.ranking import top_k_excluding


@dataclass(frozen=True)
class PopularParams:
    """`popular:` has no params (the section may be empty or missing)."""

    @classmethod
    def from_section(cls, s: Section) -> PopularParams:
        return cls()


class PopularModel(Family):
    """Distinct users per item; ties go to the lower item index."""

    type = "popular"
    Params = PopularParams
    OPTIONAL_SECTION = True

    def __init__(self, users_per_item: np.ndarray) -> None:
        self.users_per_item = np.asarray(users_per_item, dtype=np.int64)
        self.ranking = np.argsort(-self.users_per_item, kind="stable").astype(np.int32)
        self.losses: list[float] = []

    @property
    def n_items(self) -> int:
        return int(self.users_per_item.size)

    @classmethod
    def fit(
        cls, train: sp.csr_matrix, params: PopularParams, threads: int,
        on_iteration: Progress | None = None,
    ) -> PopularModel:  # fmt: skip
        counts = np.bincount(binary(train).indices, minlength=train.shape[1])
        if on_iteration is not None:
            on_iteration(1, None)
        return cls(counts)

    def arrays(self) -> dict[str, np.ndarray]:
        return {"users_per_item": self.users_per_item}

    @classmethod
    def from_arrays(
        cls, arrays: dict[str, np.ndarray], path: Path | str, shape: tuple[int | None, int],
        threads: int,
    ) -> PopularModel:  # fmt: skip
        require(arrays, path, "users_per_item")
        counts = arrays["users_per_item"]
        if counts.shape != (shape[1],) or counts.dtype.kind not in "iu" or (counts < 0).any():
            raise StageError(
                f"{path}: users_per_item must be {shape[1]} counts >= 0; re-run dvc repro"
            )
        return cls(counts)

    def recommend(
        self, users: np.ndarray, train: sp.csr_matrix, k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        ids = top_k_excluding(self.ranking, train[np.asarray(users, dtype=np.int64)], k)
        scores = np.where(ids >= 0, self.users_per_item[np.maximum(ids, 0)], np.nan)
        return ids, scores.astype(np.float32)

    def score_session(self, rows: sp.csr_matrix) -> np.ndarray:
        return np.broadcast_to(
            self.users_per_item.astype(np.float32), (rows.shape[0], self.n_items)
        ).copy()

    def similar_items(self, item: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        return top_n_of(self.users_per_item.astype(np.float32), n, np.array([item]))
