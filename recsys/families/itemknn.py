"""Item kNN (implicit's CosineRecommender, BM25Recommender, TFIDFRecommender).

implicit fits the similarity (the `neighbours` most similar items per item, its `K`); it is
saved as a float32 CSR and scored by `SimilarityFamily`, which gives the same lists as
implicit's item-item scorer without its per-user Python loop.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from implicit.nearest_neighbours import (
    BM25Recommender,
    CosineRecommender,
    ItemItemRecommender,
    TFIDFRecommender,
)
from implicit.utils import ParameterWarning

from recsys.families.base import Progress
from recsys.families.similarity import SimilarityFamily
from recsys.params import Section

SIMILARITIES = ["cosine", "bm25", "tfidf"]


@dataclass(frozen=True)
class ItemKnnParams:
    """`itemknn:` params. `bm25_k1` and `bm25_b` are validated always, used by bm25 only."""

    similarity: str
    neighbours: int
    bm25_k1: float
    bm25_b: float

    @classmethod
    def from_section(cls, s: Section) -> ItemKnnParams:
        return cls(
            similarity=s.choice("similarity", SIMILARITIES),
            neighbours=s.int("neighbours", min=1, max=10_000),
            bm25_k1=s.float("bm25_k1", min=0.0),
            bm25_b=s.float("bm25_b", min=0.0, max=1.0),
        )

    def implicit_model(self, threads: int) -> ItemItemRecommender:
        if self.similarity == "bm25":
            return BM25Recommender(
                K=self.neighbours, K1=self.bm25_k1, B=self.bm25_b, num_threads=threads
            )
        cls = CosineRecommender if self.similarity == "cosine" else TFIDFRecommender
        return cls(K=self.neighbours, num_threads=threads)


class ItemKnnModel(SimilarityFamily):
    """The item kNN family: the similarity implicit learned, scored as `rows @ S`."""

    type = "itemknn"
    Params = ItemKnnParams
    BINARY_ROWS = False  # implicit's scorer weighs each neighbour by the user's confidence

    @classmethod
    def fit(
        cls, train: sp.csr_matrix, params: ItemKnnParams, threads: int,
        on_iteration: Progress | None = None,
    ) -> ItemKnnModel:  # fmt: skip
        model = params.implicit_model(threads)
        with warnings.catch_warnings():
            # implicit re-weights into a COO matrix, then warns that it converts it to CSR
            warnings.simplefilter("ignore", ParameterWarning)
            model.fit(sp.csr_matrix(train, dtype=np.float32), show_progress=False)
        if on_iteration is not None:
            on_iteration(1, None)
        similarity = sp.csr_matrix(model.similarity, dtype=np.float32)
        similarity.sort_indices()
        return cls(similarity)

    @property
    def implicit_model(self) -> ItemItemRecommender:
        from implicit.nearest_neighbours import NearestNeighboursScorer

        model = ItemItemRecommender()
        model.similarity = self.similarity
        model.scorer = NearestNeighboursScorer(self.similarity)
        return model
