"""EASE (Steck 2019, "Embarrassingly Shallow Autoencoders"): a closed-form item x item model.

B = I - P diag(1 / diag(P)) with P = (X'X + l2 I)^-1 on the binary users x items matrix X,
then zero diagonal; a user's scores are their row of X times B. Dense by nature: the fit
holds X'X, its inverse (in place, LAPACK) and the sparse co-occurrences it came from, about
`BYTES_PER_ITEM_PAIR` x items^2 bytes, so a catalogue over `MAX_ITEMS` is refused before any
work. The inverse runs on one BLAS thread: a threaded LAPACK may round differently with the
thread count, and the model must not depend on it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.linalg
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from recsys.errors import StageError
from recsys.families.base import Progress, binary
from recsys.families.similarity import SimilarityFamily
from recsys.params import Section

MEMORY_BUDGET_GIB = 4.0  # what the fit may use; the 2-core dev machines have 8 GB
BYTES_PER_ITEM_PAIR = 12  # dense float32 Gram matrix (inverted in place) + B + sparse X'X
MAX_ITEMS = int(math.sqrt(MEMORY_BUDGET_GIB * 2**30 / BYTES_PER_ITEM_PAIR))


@dataclass(frozen=True)
class EaseParams:
    """`ease:` params."""

    l2: float

    @classmethod
    def from_section(cls, s: Section) -> EaseParams:
        return cls(l2=s.float("l2", min=0.0, min_exclusive=True))


def memory_gib(n_items: int) -> float:
    """Peak memory of an EASE fit on `n_items` items, in GiB (see BYTES_PER_ITEM_PAIR)."""
    return BYTES_PER_ITEM_PAIR * n_items**2 / 2**30


class EaseModel(SimilarityFamily):
    """The EASE family: a dense float32 B, scored as `rows @ B`."""

    type = "ease"
    Params = EaseParams

    @classmethod
    def preflight(cls, shape: tuple[int, int], params: EaseParams, threads: int) -> None:
        n_items = shape[1]
        if n_items > MAX_ITEMS:
            raise StageError(
                f"model.type = ease: {n_items:,} items need about {memory_gib(n_items):.1f} GiB "
                f"for the dense items x items matrix; the limit is {MAX_ITEMS:,} items "
                f"({MEMORY_BUDGET_GIB:g} GiB); expected a sparse family (itemknn, rp3beta) "
                "for a catalogue this size"
            )
        return None

    @classmethod
    def fit(
        cls, train: sp.csr_matrix, params: EaseParams, threads: int,
        on_iteration: Progress | None = None,
    ) -> EaseModel:  # fmt: skip
        cls.preflight(train.shape, params, threads)
        x = binary(train)
        gram = (x.T @ x).toarray().astype(np.float32, copy=False)
        gram[np.diag_indices_from(gram)] += np.float32(params.l2)
        with threadpool_limits(1, "blas"):
            # symmetric: the transposed view is Fortran-ordered, so LAPACK inverts in place
            p = scipy.linalg.inv(gram.T, overwrite_a=True, check_finite=False).T
        del gram
        diag = np.diag(p).copy()
        if not np.isfinite(p).all() or (diag <= 0).any():
            raise StageError(
                f"EASE failed (ease.l2 = {params.l2:g} leaves X'X + l2 I singular in float32); "
                "expected a larger ease.l2 (e.g. 100)"
            )
        p /= -diag[None, :]  # B = -P / diag(P), column by column
        p[np.diag_indices_from(p)] = 0.0
        if on_iteration is not None:
            on_iteration(1, None)
        return cls(np.ascontiguousarray(p, dtype=np.float32))
