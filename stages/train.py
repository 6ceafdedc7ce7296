"""Stage `train`: fit implicit's CPU ALS on data/train.npz -> models/als.npz.

Every hyper-parameter comes from params `als`; the factors are saved as float32 arrays in a
pickle-free, byte-deterministic .npz, so the same params give the same file (and DVC hash).
The training loss per iteration goes to metrics/train_loss.csv for `dvc plots`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from implicit.cpu.als import AlternatingLeastSquares
from implicit.recommender_base import ModelFitError
from threadpoolctl import threadpool_limits

from stages.common import (
    MODEL,
    TRAIN,
    TRAIN_LOSS,
    Params,
    StageError,
    load_csr,
    run_stage,
    worker_threads,
    write_npz,
    write_text,
)


@dataclass(frozen=True)
class AlsParams:
    factors: int
    regularization: float
    alpha: float
    iterations: int
    use_cg: bool
    random_state: int
    threads: int
    track_loss: bool = True


def read_params(params: Params) -> AlsParams:
    """Validate every `als.*` key before any work, so a typo fails in one line."""
    als = AlsParams(
        factors=params.int("factors", min=1, max=4096),
        regularization=params.float("regularization", min=0.0),
        alpha=params.float("alpha", min=0.0, min_exclusive=True),
        iterations=params.int("iterations", min=1, max=10_000),
        use_cg=params.bool("use_cg"),
        random_state=params.int("random_state", min=0, max=2**32 - 1),
        threads=params.int("threads", min=0, max=1024),
        track_loss=params.bool("track_loss", True),
    )
    params.check_unknown()
    return als


def resolve_threads(requested: int) -> int:
    """Threads for implicit's OpenMP loops: an explicit `als.threads` wins; 0 means automatic
    (RECSYS_THREADS, else the CPU budget shared among running queue workers).

    The thread count never changes the fitted factors, only the speed.
    """
    return worker_threads(requested)


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


def check_train(train: sp.csr_matrix, path: Path | str = TRAIN) -> sp.csr_matrix:
    """Refuse matrices ALS cannot learn from, with a message naming the file."""
    if train.nnz == 0:
        raise StageError(f"{path}: no training pairs; check mask.fraction and the input data")
    if not np.isfinite(train.data).all():
        raise StageError(f"{path}: non-finite confidences; re-run the confidence stage")
    if (train.data < 0).any():
        raise StageError(f"{path}: negative confidences; expected values > 0")
    return sp.csr_matrix(train, dtype=np.float32)


def fit_als(
    train: sp.csr_matrix, als: AlsParams, threads: int, *, show_progress: bool = True
) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """Fit ALS; return float32 (user_factors, item_factors) and the loss per iteration."""
    losses: list[float] = []

    def on_iteration(iteration: int, elapsed: float, loss: float | None) -> None:
        if als.track_loss:
            losses.append(float(loss))

    model = make_model(als, threads)
    with threadpool_limits(1, "blas"):
        try:
            model.fit(train, show_progress=show_progress, callback=on_iteration)
        except ModelFitError as exc:
            raise StageError(
                f"ALS diverged ({exc}); raise als.regularization or lower als.alpha"
            ) from None
    users = np.ascontiguousarray(model.user_factors, dtype=np.float32)
    items = np.ascontiguousarray(model.item_factors, dtype=np.float32)
    return users, items, losses


def loss_csv(losses: list[float]) -> str:
    """CSV iteration,loss (1-based iterations); 8 significant digits keep it diff-stable."""
    lines = ["iteration,loss"] + [f"{i},{loss:.8g}" for i, loss in enumerate(losses, 1)]
    return "\n".join(lines) + "\n"


def main() -> None:
    als = read_params(Params.load("als"))
    threads = resolve_threads(als.threads)
    train = check_train(load_csr(TRAIN))
    start = time.perf_counter()
    users, items, losses = fit_als(train, als, threads)
    print(
        f"train: {train.shape[0]} users x {train.shape[1]} items, {train.nnz} pairs, "
        f"factors={als.factors} iterations={als.iterations} threads={threads}: "
        f"fit {time.perf_counter() - start:.2f}s"
        + (f", final loss {losses[-1]:.6g}" if losses else " (als.track_loss off)")
    )
    write_npz(MODEL, user_factors=users, item_factors=items)
    write_text(TRAIN_LOSS, loss_csv(losses))


if __name__ == "__main__":
    run_stage(main)
