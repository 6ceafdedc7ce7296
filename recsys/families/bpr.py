"""BPR (implicit's BayesianPersonalizedRanking): pairwise ranking loss, SGD.

implicit's item factors end with an item-bias column and its user factors with a column of
ones. The fit runs on one thread whatever `runtime.threads` says: implicit's SGD samples
from one random generator per thread and updates factors without locks, so the model would
depend on the thread count (measured: two threads give other factors than one). Scoring uses
every thread.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from implicit.cpu.bpr import BayesianPersonalizedRanking

from recsys.families.base import Progress
from recsys.families.factors import FactorFamily, mean_item_vectors
from recsys.params import Section

MAX_FACTORS = 1024


@dataclass(frozen=True)
class BprParams:
    """`bpr:` params; every one changes the fitted model."""

    factors: int
    learning_rate: float
    regularization: float
    iterations: int
    verify_negative_samples: bool
    random_state: int

    @classmethod
    def from_section(cls, s: Section) -> BprParams:
        return cls(
            factors=s.int("factors", min=1, max=MAX_FACTORS),
            learning_rate=s.float("learning_rate", min=0.0, max=10.0, min_exclusive=True),
            regularization=s.float("regularization", min=0.0),
            iterations=s.int("iterations", min=1, max=100_000),
            verify_negative_samples=s.bool("verify_negative_samples"),
            random_state=s.int("random_state", min=0, max=2**32 - 1),
        )


class BprModel(FactorFamily):
    """The BPR family; an anonymous session scores like a user whose vector is the mean of
    its items' factors (implicit has no fold-in for BPR)."""

    type = "bpr"
    Params = BprParams

    @classmethod
    def fit(
        cls, train: sp.csr_matrix, params: BprParams, threads: int,
        on_iteration: Progress | None = None,
    ) -> BprModel:  # fmt: skip
        return cls._fit_one_thread(
            lambda: BayesianPersonalizedRanking(
                factors=params.factors,
                learning_rate=params.learning_rate,
                regularization=params.regularization,
                dtype=np.float32,
                iterations=params.iterations,
                num_threads=1,  # see the module docstring
                verify_negative_samples=params.verify_negative_samples,
                random_state=params.random_state,
            ),
            train,
            threads,
            on_iteration,
        )

    def _implicit(self, threads: int) -> BayesianPersonalizedRanking:
        return BayesianPersonalizedRanking(
            factors=self.item_factors.shape[1] - 1, dtype=np.float32, num_threads=threads
        )

    def score_session(self, rows: sp.csr_matrix) -> np.ndarray:
        vectors = mean_item_vectors(rows, self.item_factors)
        vectors[:, -1] = 1.0  # the user column that multiplies the item bias
        return self._session_scores(vectors)
