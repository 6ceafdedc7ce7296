"""Stage `train`: fit implicit's ALS on the training pairs; float32 factors, loss per iteration."""

import sys
import time

from recsys.cli import run_stage
from recsys.io import live_json, load_csr, write_npz, write_text
from recsys.models import AlsParams, check_train, fit_als, loss_csv, slow_fit_warning
from recsys.params import load
from recsys.paths import MODEL, TRAIN, TRAIN_LOSS, TRAIN_PROGRESS
from recsys.threads import stage_threads


def main() -> None:
    als = load(AlsParams.from_section, "als")
    threads = stage_threads()
    train = check_train(load_csr(TRAIN))
    warning = slow_fit_warning(train.shape, als, threads)
    if warning:
        print(warning, file=sys.stderr, flush=True)

    with live_json(TRAIN_PROGRESS) as publish:  # live in `dvc exp show`; undone on failure

        def report(iteration: int, loss: float | None) -> None:
            done = {"iteration": iteration, "iterations": als.iterations}
            publish(done if loss is None else done | {"loss": round(loss, 8)})

        report(0, None)
        start = time.perf_counter()
        users, items, losses = fit_als(train, als, threads, on_iteration=report)
        write_npz(MODEL, user_factors=users, item_factors=items)
        write_text(TRAIN_LOSS, loss_csv(losses))
    print(
        f"train: {train.shape[0]:,} users x {train.shape[1]:,} items, {train.nnz:,} pairs, "
        f"factors={als.factors} iterations={als.iterations} threads={threads}: "
        f"fit {time.perf_counter() - start:.2f}s"
        + (f", final loss {losses[-1]:.6g}" if losses else " (als.track_loss off)")
    )


if __name__ == "__main__":
    run_stage(main)
