"""ALS (implicit's AlternatingLeastSquares): build, fit, save and load, in one place.

The stages, the benchmarks and the tests all build their ALS model here, so a knob means the
same thing everywhere. Factors are float32 and saved pickle-free; a model is rebuilt around
saved factors (`model_from_factors`) to score with implicit's own top-k. `models/als.npz`
also records `regularization` and `alpha`: folding in an anonymous session solves the same
least-squares problem as training did.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from implicit.cpu.als import AlternatingLeastSquares
from implicit.recommender_base import ModelFitError
from threadpoolctl import threadpool_limits

from recsys.errors import StageError
from recsys.families.factors import FactorFamily
from recsys.params import Section

# One CG iteration costs about SECONDS_PER_ROW_FACTOR2 x (users + items) x factors^2 core-
# seconds. Measured on the 2-core dev machine (shared, so pessimistic) at the default scale,
# 94,155 x 2,465 with 192k pairs, 2 threads: 64 factors 1.8 s, 200 5.2 s, 512 21 s, 1024 107 s
# per iteration; 4096 would take most of an hour, so the limit is 1024.
SECONDS_PER_ROW_FACTOR2 = 2e-9
MAX_FACTORS = 1024
SLOW_ITERATION_S = 60.0  # train warns, with its estimate, above this


@dataclass(frozen=True)
class AlsParams:
    """`als:` params; every one changes the fitted model (threads are a runtime knob)."""

    factors: int
    regularization: float
    alpha: float
    iterations: int
    use_cg: bool
    random_state: int
    track_loss: bool = True

    @classmethod
    def from_section(cls, s: Section) -> AlsParams:
        return cls(
            factors=s.int(
                "factors",
                min=1,
                max=MAX_FACTORS,
                hint=f"; time grows with factors squared: {MAX_FACTORS} already takes minutes "
                "per ALS iteration at 100k users",
            ),
            regularization=s.float("regularization", min=0.0),
            alpha=s.float("alpha", min=0.0, min_exclusive=True),
            iterations=s.int("iterations", min=1, max=10_000),
            use_cg=s.bool("use_cg"),
            random_state=s.int("random_state", min=0, max=2**32 - 1),
            track_loss=s.bool("track_loss", True),
        )


def make_model(als: AlsParams, threads: int) -> AlternatingLeastSquares:
    """An implicit CPU ALS model from the params, built under a one-thread BLAS limit.

    implicit checks the BLAS thread pool when the model is built and warns if it is > 1
    (a threaded BLAS inside its own OpenMP loops is much slower); fit keeps the limit too.
    """
    with threadpool_limits(1, "blas"):
        return AlternatingLeastSquares(
            factors=als.factors,
            regularization=als.regularization,
            alpha=als.alpha,
            dtype=np.float32,
            use_cg=als.use_cg,
            iterations=als.iterations,
            # implicit's loss pass costs about a third of a fit at 200 factors
            calculate_training_loss=als.track_loss,
            num_threads=threads,
            random_state=als.random_state,
        )


def iteration_seconds(shape: tuple[int, int], factors: int, threads: int) -> float:
    """Rough wall time of one ALS iteration (conjugate gradient) on this class of machine."""
    return SECONDS_PER_ROW_FACTOR2 * (shape[0] + shape[1]) * factors**2 / max(1, threads)


def slow_fit_warning(shape: tuple[int, int], als: AlsParams, threads: int) -> str | None:
    """A one-line warning when the fit will be slow (None otherwise), with the estimate."""
    per_iteration = iteration_seconds(shape, als.factors, threads)
    if per_iteration < SLOW_ITERATION_S:
        return None
    total = per_iteration * als.iterations
    solver = "" if als.use_cg else " (more with als.use_cg: false)"
    return (
        f"warning: als.factors = {als.factors} on {shape[0]:,} x {shape[1]:,} with {threads} "
        f"threads: roughly {per_iteration / 60:.0f} min per iteration, "
        f"{total / 3600:.1f} h for {als.iterations}{solver}; time grows with factors squared"
    )


def fit_als(
    train: sp.csr_matrix,
    als: AlsParams,
    threads: int,
    *,
    show_progress: bool | None = None,
    on_iteration: Callable[[int, float | None], None] | None = None,
) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """Fit ALS; return float32 (user_factors, item_factors) and the loss per iteration.

    implicit's progress bar shows on a terminal only (`show_progress=None`), not in logs;
    `on_iteration(iteration, loss)` is called after each sweep (loss None without track_loss).
    """
    if show_progress is None:
        show_progress = sys.stderr.isatty()
    losses: list[float] = []

    def callback(iteration: int, elapsed: float, loss: float | None) -> None:
        if als.track_loss:
            if not np.isfinite(loss):
                raise StageError(
                    f"ALS failed (loss {loss} after iteration {iteration + 1}); "
                    f"{fit_hint(train, als)}"
                )
            losses.append(float(loss))
        if on_iteration is not None:
            on_iteration(iteration + 1, losses[-1] if als.track_loss else None)

    model = make_model(als, threads)
    with threadpool_limits(1, "blas"):
        try:
            model.fit(train, show_progress=show_progress, callback=callback)
        except (ModelFitError, ValueError) as exc:
            # ModelFitError: NaN in the factors after fitting; ValueError: the exact solver
            # (use_cg: false) met a system that is not positive definite, and its message
            # always says "increase regularization", which is wrong when a param is huge.
            if isinstance(exc, ValueError) and "posv" not in str(exc):
                raise
            posv = isinstance(exc, ValueError)
            reason = "a least-squares system was not positive definite" if posv else str(exc)
            raise StageError(f"ALS failed ({reason}); {fit_hint(train, als)}") from None
    users = np.ascontiguousarray(model.user_factors, dtype=np.float32)
    items = np.ascontiguousarray(model.item_factors, dtype=np.float32)
    if not users.any() or not items.any():
        raise StageError(
            f"ALS learned all-zero factors: als.regularization = {als.regularization:g} "
            "outweighs every confidence; expected a smaller als.regularization (e.g. 0.01)"
        )
    return users, items, losses


# Beyond these, float32 arithmetic in implicit's solvers overflows (measured on small
# matrices: regularization >= 1e21 or alpha x confidence >= 2e9 gives NaN factors).
HUGE_REGULARIZATION = 1e6
HUGE_CONFIDENCE = 1e8


def fit_hint(train: sp.csr_matrix, als: AlsParams) -> str:
    """What to change after a failed fit, by which param is extreme.

    A huge regularization or alpha x confidence overflows float32; otherwise the systems
    were singular, which more regularization fixes.
    """
    largest = als.alpha * float(train.data.max()) if train.nnz else 0.0
    hints = []
    if als.regularization >= HUGE_REGULARIZATION:
        hints.append(
            f"als.regularization = {als.regularization:g} is so large that float32 "
            "arithmetic overflows: lower it (typical values are 0.001 to 1)"
        )
    if largest >= HUGE_CONFIDENCE:
        hints.append(
            f"als.alpha x the largest confidence = {largest:.3g} overflows float32 "
            "arithmetic: lower als.alpha (or confidence.weights)"
        )
    if not hints:
        hints.append(
            f"als.regularization = {als.regularization:g} is too small to keep the "
            "least-squares systems solvable: raise it (e.g. to 0.01)"
        )
    return "; ".join(hints)


def model_from_factors(
    user_factors: np.ndarray,
    item_factors: np.ndarray,
    threads: int,
    regularization: float = 0.01,
    alpha: float = 1.0,
) -> AlternatingLeastSquares:
    """An implicit ALS model around saved factors, so scoring uses implicit's own top-k.

    `regularization` and `alpha` matter only to `recalculate_user` (session fold-in).
    Built under a one-thread BLAS limit: implicit warns at construction otherwise.
    """
    with threadpool_limits(1, "blas"):
        model = AlternatingLeastSquares(
            factors=item_factors.shape[1],
            regularization=regularization,
            alpha=alpha,
            dtype=np.float32,
            num_threads=threads,
        )
    model.user_factors = np.ascontiguousarray(user_factors, dtype=np.float32)
    model.item_factors = np.ascontiguousarray(item_factors, dtype=np.float32)
    return model


class AlsModel(FactorFamily):
    """The ALS family: implicit's fit, known users by implicit's top-k, anonymous sessions
    folded in with implicit's `recalculate_user` (the exact least-squares user vector)."""

    type = "als"
    Params = AlsParams
    EXTRA = ("regularization", "alpha")
    _inverse: np.ndarray | bool | None = None  # (YtY + reg I)^-1, built on the first session

    @classmethod
    def preflight(cls, shape: tuple[int, int], params: AlsParams, threads: int) -> str | None:
        return slow_fit_warning(shape, params, threads)

    @classmethod
    def fit(
        cls,
        train: sp.csr_matrix,
        params: AlsParams,
        threads: int,
        on_iteration: Callable[[int, float | None], None] | None = None,
    ) -> AlsModel:
        users, items, losses = fit_als(train, params, threads, on_iteration=on_iteration)
        model = cls(users, items, threads, regularization=params.regularization, alpha=params.alpha)
        model.losses = losses
        return model

    @classmethod
    def from_factors(
        cls, user_factors: np.ndarray, item_factors: np.ndarray, threads: int,
        regularization: float = 0.01, alpha: float = 1.0,
    ) -> AlsModel:  # fmt: skip
        """An ALS family model around factors fitted elsewhere (tests, benchmarks)."""
        return cls(user_factors, item_factors, threads, regularization=regularization,
                   alpha=alpha)  # fmt: skip

    def _implicit(self, threads: int) -> AlternatingLeastSquares:
        return model_from_factors(
            np.zeros((0, self.item_factors.shape[1]), np.float32), self.item_factors, threads,
            self.extra["regularization"], self.extra["alpha"],
        )  # fmt: skip

    def score_session(self, rows: sp.csr_matrix) -> np.ndarray:
        """Fold each session in as implicit's `recalculate_user` does, without its cost.

        The user vector solves (YtY + reg I + Yk' (C - I) Yk) x = Yk' C 1 over the session's k
        items (C = alpha x their values). implicit rebuilds and factorises the f x f system per
        call (milliseconds at 320 factors); here (YtY + reg I)^-1 is computed once per model
        and each session costs a k x k solve (Woodbury identity), so a service answers a
        session in well under a millisecond. Sessions are requests, a handful per call.
        """
        rows = rows if sp.isspmatrix_csr(rows) else sp.csr_matrix(rows)
        inverse = self._inverse_gram()
        if inverse is None:  # singular without regularization: implicit's own solve
            rows32 = sp.csr_matrix(rows, dtype=np.float32)
            with threadpool_limits(1, "blas"):
                vectors = self.implicit_model.recalculate_user(np.arange(rows.shape[0]), rows32)
            return self._session_scores(np.asarray(vectors).reshape(rows.shape[0], -1))
        vectors = np.zeros((rows.shape[0], self.item_factors.shape[1]))
        for r in range(rows.shape[0]):
            span = slice(rows.indptr[r], rows.indptr[r + 1])
            if span.start == span.stop:
                continue
            confidence = self.extra["alpha"] * rows.data[span].astype(np.float64)
            chosen = self.item_factors[rows.indices[span]].astype(np.float64)  # k x f
            inv_b = inverse @ (confidence @ chosen)
            inv_ut = inverse @ chosen.T
            boost = confidence - 1.0
            small = np.eye(chosen.shape[0]) + boost[:, None] * (chosen @ inv_ut)
            vectors[r] = inv_b - inv_ut @ np.linalg.solve(small, boost * (chosen @ inv_b))
        return self._session_scores(vectors)

    def _inverse_gram(self) -> np.ndarray | None:
        if self._inverse is None:
            items = self.item_factors.astype(np.float64)
            gram = items.T @ items + self.extra["regularization"] * np.eye(items.shape[1])
            try:
                self._inverse = np.linalg.inv(gram)
            except np.linalg.LinAlgError:
                self._inverse = False
        return None if self._inverse is False else self._inverse
