"""LMF (implicit's LogisticMatrixFactorization): a logistic model of who uses what.

implicit's factors carry two extra columns: the user side holds [factors, 1, user bias], the
item side [factors, item bias, 1]. Like BPR the fit runs on one thread: its negative samples
come from per-thread generators, so the model would depend on the thread count.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from implicit.cpu.lmf import LogisticMatrixFactorization

from recsys.families.base import Progress
from recsys.families.factors import FactorFamily, mean_item_vectors
from recsys.params import Section

MAX_FACTORS = 1024


@dataclass(frozen=True)
class LmfParams:
    """`lmf:` params; every one changes the fitted model."""

    factors: int
    learning_rate: float
    regularization: float
    iterations: int
    neg_prop: int
    random_state: int

    @classmethod
    def from_section(cls, s: Section) -> LmfParams:
        return cls(
            factors=s.int("factors", min=1, max=MAX_FACTORS),
            learning_rate=s.float("learning_rate", min=0.0, max=100.0, min_exclusive=True),
            regularization=s.float("regularization", min=0.0),
            iterations=s.int("iterations", min=1, max=100_000),
            neg_prop=s.int("neg_prop", min=1, max=1000),
            random_state=s.int("random_state", min=0, max=2**32 - 1),
        )


class LmfModel(FactorFamily):
    """The LMF family; an anonymous session scores like a user whose vector is the mean of
    its items' factors, with a zero user bias (implicit has no fold-in for LMF)."""

    type = "lmf"
    Params = LmfParams

    @classmethod
    def fit(
        cls, train: sp.csr_matrix, params: LmfParams, threads: int,
        on_iteration: Progress | None = None,
    ) -> LmfModel:  # fmt: skip
        return cls._fit_one_thread(
            lambda: LogisticMatrixFactorization(
                factors=params.factors,
                learning_rate=params.learning_rate,
                regularization=params.regularization,
                dtype=np.float32,
                iterations=params.iterations,
                neg_prop=params.neg_prop,
                num_threads=1,  # see the module docstring
                random_state=params.random_state,
            ),
            train,
            threads,
            on_iteration,
        )

    def _implicit(self, threads: int) -> LogisticMatrixFactorization:
        return LogisticMatrixFactorization(
            factors=self.item_factors.shape[1] - 2, dtype=np.float32, num_threads=threads
        )

    def score_session(self, rows: sp.csr_matrix) -> np.ndarray:
        vectors = mean_item_vectors(rows, self.item_factors)
        vectors[:, -2] = 1.0  # multiplies the item bias
        vectors[:, -1] = 0.0  # the (unknown) user's bias shifts every item alike
        return self._session_scores(vectors)
