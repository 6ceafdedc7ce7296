"""Stage `mask`: split the confidence matrix into training and held-out pairs."""

import numpy as np

from recsys.cli import run_stage
from recsys.io import load_csr, save_csr
from recsys.params import load
from recsys.paths import LAST_SEEN, MATRIX, TEST, TRAIN
from recsys.split import MaskParams, split


def main() -> None:
    params = load(MaskParams.from_section, "mask")
    matrix = load_csr(MATRIX)
    last_seen = load_csr(LAST_SEEN) if params.strategy == "time" else None
    train, test = split(matrix, last_seen, params)
    save_csr(TRAIN, train)
    save_csr(TEST, test)
    users = int(np.count_nonzero(np.diff(test.indptr)))
    print(
        f"mask ({params.strategy}): {train.nnz:,} training pairs, {test.nnz:,} held out "
        f"for {users:,} users"
    )


if __name__ == "__main__":
    run_stage(main)
