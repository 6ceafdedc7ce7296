"""What the item-similarity families (item kNN, EASE, RP3beta) share: a user's score for an
item is the sum of the similarities from the items the user has, `scores = rows @ S`.

S is sparse (top-K neighbours per item: kNN, RP3beta) or dense (EASE). Known users and
anonymous sessions are scored the same way, in batches of users whose dense score block
stays within `BATCH_CELLS`; with a sparse S an item no used item points to has no score
(never recommended), as in implicit's own item-item scorer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from recsys.errors import StageError
from recsys.families.base import (
    Family,
    batches,
    binary,
    check_finite,
    dense_scores,
    exclude,
    require,
    top_k_dense,
    top_n_of,
)


class SimilarityFamily(Family):
    """A model that is an items x items similarity S (float32, sparse CSR or dense).

    `BINARY_ROWS`: score with which items a user has (1.0 each), as the model was fitted
    (EASE, RP3beta), instead of the confidences (item kNN, as implicit scores it).
    """

    BINARY_ROWS = True

    def __init__(self, similarity: sp.csr_matrix | np.ndarray) -> None:
        self.similarity = similarity
        self.losses: list[float] = []

    @property
    def n_items(self) -> int:
        return int(self.similarity.shape[0])

    def arrays(self) -> dict[str, np.ndarray]:
        s = self.similarity
        if not sp.issparse(s):
            return {"similarity": np.asarray(s, dtype=np.float32)}
        s = sp.csr_matrix(s, dtype=np.float32)
        s.sort_indices()
        return {
            "similarity_data": s.data,
            "similarity_indices": s.indices,
            "similarity_indptr": s.indptr,
            "similarity_shape": np.array(s.shape, dtype=np.int64),
        }

    @classmethod
    def from_arrays(
        cls, arrays: dict[str, np.ndarray], path: Path | str, shape: tuple[int | None, int],
        threads: int,
    ) -> Family:  # fmt: skip
        n_items = shape[1]
        if "similarity" in arrays:
            s: Any = check_finite(arrays["similarity"], path, "similarity")
            if s.shape != (n_items, n_items):
                raise StageError(
                    f"{path}: similarity has shape {s.shape}; expected ({n_items}, {n_items}) "
                    "to match the training matrix; re-run dvc repro"
                )
            return cls(np.ascontiguousarray(s))
        keys = ("similarity_data", "similarity_indices", "similarity_indptr", "similarity_shape")
        require(arrays, path, *keys)
        if tuple(arrays["similarity_shape"].tolist()) != (n_items, n_items):
            raise StageError(
                f"{path}: similarity is {tuple(arrays['similarity_shape'].tolist())}; expected "
                f"({n_items}, {n_items}) to match the training matrix; re-run dvc repro"
            )
        try:
            s = sp.csr_matrix(
                (check_finite(arrays["similarity_data"], path, "similarity_data"),
                 arrays["similarity_indices"], arrays["similarity_indptr"]),
                shape=(n_items, n_items),
            )  # fmt: skip
            s.check_format(full_check=True)
        except ValueError:
            raise StageError(f"{path}: not a valid sparse similarity; re-run dvc repro") from None
        return cls(s)

    def _block(self, rows: sp.csr_matrix, fill: float) -> np.ndarray:
        rows = binary(rows) if self.BINARY_ROWS else sp.csr_matrix(rows, dtype=np.float32)
        product = rows @ self.similarity
        return dense_scores(product, fill)

    def recommend(
        self, users: np.ndarray, train: sp.csr_matrix, k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        users = np.asarray(users, dtype=np.int64)
        ids = np.full((users.size, k), -1, dtype=np.int32)
        scores = np.full((users.size, k), np.nan, dtype=np.float32)
        for part in batches(users.size, self.n_items):
            rows = train[users[part]]
            block = exclude(self._block(rows, -np.inf), rows)
            ids[part], scores[part] = top_k_dense(block, k)
        return ids, scores

    def score_session(self, rows: sp.csr_matrix) -> np.ndarray:
        return self._block(rows, np.nan)

    def similar_items(self, item: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        if sp.issparse(self.similarity):
            row = dense_scores(self.similarity[item], np.nan)[0]
        else:
            row = np.asarray(self.similarity[item], dtype=np.float32)
        return top_n_of(row, n, np.array([item]))
