"""Stage `train`: fit the `model.type` family on the training pairs into `models/<type>.npz`."""

import sys
import time

from recsys.cli import run_stage
from recsys.confidence import load_events
from recsys.errors import StageError
from recsys.families import load_family, model_file
from recsys.families.base import check_train, loss_csv
from recsys.families.rerank import first_seen, load_item_features
from recsys.ids import load_ids
from recsys.io import live_json, load_csr, write_text
from recsys.paths import (
    INTERACTIONS,
    ITEM_IDS,
    ITEMS,
    TRAIN,
    TRAIN_LOSS,
    TRAIN_PROGRESS,
    USER_IDS,
)
from recsys.threads import stage_threads


def main() -> None:
    family, params = load_family()
    threads = stage_threads()
    train = check_train(load_csr(TRAIN))
    warning = family.preflight(train.shape, params, threads)  # may refuse (EASE memory)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    iterations = family.iterations(params)
    inputs = {}
    if family.ITEM_FEATURES:  # rerank: the catalogue's category, style, gender and price
        item_ids = load_ids(ITEM_IDS, "ITEM_ID")
        if item_ids.size != train.shape[1]:
            raise StageError(
                f"{ITEM_IDS} lists {item_ids.size:,} items; {TRAIN} has {train.shape[1]:,} "
                "columns; re-run dvc repro"
            )
        inputs["items"] = load_item_features(ITEMS, item_ids)
        # the order of each user's training items: their pairs' first event times (the
        # held-out pairs' events are read past)
        user_ids = load_ids(USER_IDS, "USER_ID")
        if user_ids.size != train.shape[0]:
            raise StageError(
                f"{USER_IDS} lists {user_ids.size:,} users; {TRAIN} has {train.shape[0]:,} "
                "rows; re-run dvc repro"
            )
        inputs["first_seen"] = first_seen(load_events(INTERACTIONS), train, user_ids, item_ids)

    with live_json(TRAIN_PROGRESS) as publish:  # live in `dvc exp show`; undone on failure

        def report(iteration: int, loss: float | None) -> None:
            done = {"iteration": iteration, "iterations": iterations}
            publish(done if loss is None else done | {"loss": round(loss, 8)})

        report(0, None)
        start = time.perf_counter()
        model = family.fit(train, params, threads, on_iteration=report, **inputs)
        seconds = time.perf_counter() - start
        model.save(model_file(family.type))
        write_text(TRAIN_LOSS, loss_csv(model.losses))
    losses = model.losses
    print(
        f"train: {family.type} on {train.shape[0]:,} users x {train.shape[1]:,} items, "
        f"{train.nnz:,} pairs, threads={threads}: fit {seconds:.2f}s"
        + (f", final loss {losses[-1]:.6g}" if losses else "")
    )


if __name__ == "__main__":
    run_stage(main)
