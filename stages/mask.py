"""Stage `mask`: split the confidence matrix into training and held-out pairs."""

import datetime as dt
from typing import Any

import numpy as np
import scipy.sparse as sp

from recsys.cli import run_stage
from recsys.confidence import ConfidenceParams, load_events
from recsys.errors import StageError
from recsys.ids import load_ids
from recsys.io import load_csr, save_csr, write_json
from recsys.params import load
from recsys.paths import (
    INTERACTIONS,
    ITEM_IDS,
    LAST_SEEN,
    MATRIX,
    SPLIT_JSON,
    TEST,
    TRAIN,
    USER_IDS,
)
from recsys.split import (
    MaskParams,
    global_time_split,
    history_before,
    resolve_cutoff,
    split,
    split_report,
)


def main() -> None:
    params = load(MaskParams.from_section, "mask")
    matrix = load_csr(MATRIX)
    extra: dict[str, Any] = {}
    if params.strategy == "global_time":
        train, test, extra = split_at_cutoff(matrix, params)
    else:
        last_seen = load_csr(LAST_SEEN) if params.strategy == "time" else None
        train, test = split(matrix, last_seen, params)
    report = split_report(params, train, test, extra)
    save_csr(TRAIN, train)
    save_csr(TEST, test)
    write_json(SPLIT_JSON, report)
    users = int(np.count_nonzero(np.diff(test.indptr)))
    print(
        f"mask ({params.strategy}): {train.nnz:,} training pairs, {test.nnz:,} held out "
        f"for {users:,} users"
    )
    if params.strategy == "global_time":
        print(
            f"mask: cutoff {extra['cutoff']}; left out {extra['cold_users']:,} users first "
            f"seen after it ({extra['cold_user_pairs']:,} pairs); {extra['cold_items']:,} items "
            f"first seen after it, on {extra['cold_item_test_pairs']:,} held-out pairs (misses)"
        )


def split_at_cutoff(
    matrix: sp.csr_matrix, params: MaskParams
) -> tuple[sp.csr_matrix, sp.csr_matrix, dict[str, Any]]:
    """The global time split, from the event log and the matrix's id maps."""
    events = load_events(INTERACTIONS)
    weights = load(ConfidenceParams.from_section, "confidence")
    cutoff = resolve_cutoff(params.cutoff, events["TIMESTAMP"].to_numpy())
    history = history_before(
        events, cutoff, weights, load_ids(USER_IDS, "USER_ID"), load_ids(ITEM_IDS, "ITEM_ID")
    )
    train, test, counts = global_time_split(matrix, history)
    when = dt.datetime.fromtimestamp(cutoff, dt.UTC).isoformat()
    if train.nnz == 0 or test.nnz == 0:
        side = "before" if train.nnz == 0 else "first seen after"
        raise StageError(
            f"params.yaml: mask.cutoff = {when} leaves no pairs {side} "
            "it; expected a cutoff inside the log's time range"
        )
    return train, test, {"cutoff": when, "cutoff_timestamp": cutoff} | counts


if __name__ == "__main__":
    run_stage(main)
