"""RP3beta (Paudel et al. 2017; as in Dacrema et al.'s reproducibility study): a three-step
random walk item -> user -> item, with popular targets damped.

W[i, j] = sum over users u of P(u | i)^alpha * P(j | u)^alpha, divided by popularity(j)^beta,
no self-loops, keeping the `neighbours` largest per item. Built in blocks of item rows on
the binary matrix, so memory is one dense block plus the sparse result, never items^2.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from recsys.families.base import Progress, batches, binary, dense_scores, top_k_dense
from recsys.families.similarity import SimilarityFamily
from recsys.params import Section


@dataclass(frozen=True)
class Rp3betaParams:
    """`rp3beta:` params."""

    alpha: float
    beta: float
    neighbours: int

    @classmethod
    def from_section(cls, s: Section) -> Rp3betaParams:
        return cls(
            alpha=s.float("alpha", min=0.0, max=10.0, min_exclusive=True),
            beta=s.float("beta", min=0.0, max=10.0),
            neighbours=s.int("neighbours", min=1, max=10_000),
        )


def _row_normalised(m: sp.csr_matrix, alpha: float) -> sp.csr_matrix:
    """Rows divided by their sums (transition probabilities), raised to `alpha`."""
    m = sp.csr_matrix(m, dtype=np.float32, copy=True)
    sums = np.asarray(m.sum(axis=1), dtype=np.float32).ravel()
    m.data /= np.repeat(np.where(sums > 0, sums, 1), np.diff(m.indptr))
    if alpha != 1.0:
        m.data **= np.float32(alpha)
    return m


def rp3beta_similarity(train: sp.csr_matrix, params: Rp3betaParams) -> sp.csr_matrix:
    """The items x items float32 CSR of top-`neighbours` RP3beta weights per item."""
    x = binary(train)
    n_items = x.shape[1]
    user_to_item = _row_normalised(x, params.alpha)  # P(j | u)
    item_to_user = _row_normalised(x.T.tocsr(), params.alpha)  # P(u | i)
    popularity = np.asarray(x.sum(axis=0), dtype=np.float32).ravel()
    damp = np.where(popularity > 0, popularity, 1) ** np.float32(-params.beta)
    k = min(params.neighbours, n_items)
    rows, cols, vals = [], [], []
    for part in batches(n_items, n_items):
        walk = (item_to_user[part] @ user_to_item).tocsr()
        walk.data *= damp[walk.indices].astype(np.float32)
        block = dense_scores(walk, -np.inf)
        own = np.arange(part.start, part.stop)
        block[own - part.start, own] = -np.inf  # no self-loops
        block[block <= 0] = -np.inf  # only items the walk reaches
        ids, weights = top_k_dense(block, k)
        keep = ids >= 0
        rows.append(np.broadcast_to(own[:, None], ids.shape)[keep])
        cols.append(ids[keep])
        vals.append(weights[keep])
    similarity = sp.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
        shape=(n_items, n_items),
        dtype=np.float32,
    )
    similarity.sort_indices()
    return similarity


class Rp3betaModel(SimilarityFamily):
    """The RP3beta family: a sparse top-K item graph, scored as `rows @ W`."""

    type = "rp3beta"
    Params = Rp3betaParams

    @classmethod
    def fit(
        cls, train: sp.csr_matrix, params: Rp3betaParams, threads: int,
        on_iteration: Progress | None = None,
    ) -> Rp3betaModel:  # fmt: skip
        similarity = rp3beta_similarity(train, params)
        if on_iteration is not None:
            on_iteration(1, None)
        return cls(similarity)
