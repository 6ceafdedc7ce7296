"""Stage `mask`: split the confidence matrix into training and held-out pairs.

`random` holds out `mask.fraction` of all non-zero pairs, seeded, as the article does; `time`
holds out each user's most recent pairs, which is what predicts production performance. Both
give two matrices of the full shape with train + test = matrix and no pair in both.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from stages.common import (
    LAST_SEEN,
    MATRIX,
    TEST,
    TRAIN,
    Params,
    StageError,
    load_csr,
    run_stage,
    save_csr,
)

STRATEGIES = ["random", "time"]


def read_params(params: Params) -> dict:
    """Validate the `mask` section before any work."""
    cfg = {
        "strategy": params.choice("strategy", STRATEGIES, "random"),
        "fraction": params.float(
            "fraction", 0.2, min=0, max=1, min_exclusive=True, max_exclusive=True
        ),
        "seed": params.int("seed", 7, min=0),
        # time strategy only: hold out the last N pairs per user instead of a fraction (0 = off)
        "last_n": params.int("last_n", 0, min=0),
        "min_history": params.int("min_history", 2, min=2),
    }
    params.check_unknown()
    return cfg


def split_pairs(matrix: sp.csr_matrix, mask: np.ndarray) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """Split a CSR matrix by a boolean mask over its stored entries (True = held out)."""
    matrix = sp.csr_matrix(matrix)
    matrix.sort_indices()
    rows = np.repeat(np.arange(matrix.shape[0], dtype=np.int32), np.diff(matrix.indptr))

    def pick(keep: np.ndarray) -> sp.csr_matrix:
        return sp.csr_matrix(
            (matrix.data[keep], (rows[keep], matrix.indices[keep])),
            shape=matrix.shape,
            dtype=matrix.dtype,
        )

    return pick(~mask), pick(mask)


def random_split(
    matrix: sp.csr_matrix, fraction: float, seed: int
) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """Hold out round(fraction * nnz) pairs chosen uniformly at random (seeded)."""
    n_test = int(round(fraction * matrix.nnz))
    if n_test == 0 or n_test == matrix.nnz:
        raise StageError(
            f"params.yaml: mask.fraction = {fraction} holds out {n_test} of {matrix.nnz} pairs; "
            "expected a split with pairs on both sides"
        )
    rng = np.random.default_rng(seed)
    held_out = np.zeros(matrix.nnz, dtype=bool)
    held_out[rng.choice(matrix.nnz, size=n_test, replace=False)] = True
    return split_pairs(matrix, held_out)


def main() -> None:
    cfg = read_params(Params.load("mask"))
    matrix = load_csr(MATRIX)
    if cfg["strategy"] == "random":
        train, test = random_split(matrix, cfg["fraction"], cfg["seed"])
    else:
        from stages.time_split import time_split

        last_seen = load_csr(LAST_SEEN)
        train, test = time_split(
            matrix,
            last_seen,
            fraction=None if cfg["last_n"] else cfg["fraction"],
            last_n=cfg["last_n"] or None,
            min_history=cfg["min_history"],
        )
    save_csr(TRAIN, train)
    save_csr(TEST, test)
    users = int(np.count_nonzero(np.diff(test.indptr)))
    print(
        f"mask ({cfg['strategy']}): {train.nnz:,} training pairs, {test.nnz:,} held out "
        f"for {users:,} users"
    )


if __name__ == "__main__":
    run_stage(main)
