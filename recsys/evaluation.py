"""The offline evaluation protocol: who is scored, against what, and how it is summarised.

Every user with at least one held-out pair is scored; each user's training items are
excluded from every ranking (a shop does not recommend what the user already has). AP@K
divides by min(K, |held-out|), as `implicit.evaluation` does: not the reference article's
comparison with a second model on 20 users. Also scored: the most-popular baseline, the
cold-start fallback on users with <= 1 training item, what the bundle actually serves, and
how often recommendations fall in the user's persona categories.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
from implicit.cpu.als import AlternatingLeastSquares
from threadpoolctl import threadpool_limits

from recsys.errors import StageError
from recsys.metrics import METRICS, category_share, evaluate_recs
from recsys.params import Section
from recsys.paths import ITEM_IDS, TEST, TRAIN, USER_IDS
from recsys.ranking import popularity_ranking, top_k_excluding, top_k_unseen

DIGITS = 6


@dataclass(frozen=True)
class EvaluateParams:
    """`evaluate:` params."""

    k: int

    @classmethod
    def from_section(cls, s: Section) -> EvaluateParams:
        return cls(k=s.int("k", min=1, max=1000))


def check_split(
    train: sp.csr_matrix, test: sp.csr_matrix, user_ids: np.ndarray, item_ids: np.ndarray, k: int
) -> None:
    """Refuse inputs that cannot be evaluated, naming the file or param at fault."""
    if test.shape != train.shape:
        raise StageError(f"{TEST}: shape {test.shape} differs from {TRAIN} {train.shape}")
    if (user_ids.size, item_ids.size) != train.shape:
        raise StageError(f"{USER_IDS} / {ITEM_IDS} do not match {TRAIN} {train.shape}")
    if k > train.shape[1]:
        raise StageError(f"params.yaml: evaluate.k = {k}; expected <= {train.shape[1]} (items)")
    if test.nnz == 0:
        raise StageError(f"{TEST}: no held-out pairs; check the mask params")


def evaluated_users(test: sp.csr_matrix) -> np.ndarray:
    """Row indices of every user with at least one held-out pair."""
    return np.flatnonzero(np.diff(test.indptr) > 0)


def score_model_and_baseline(
    model: AlternatingLeastSquares, train: sp.csr_matrix, test: sp.csr_matrix, k: int
) -> dict[str, Any]:
    """Recommendations and metrics (every k) of the model and most-popular on all users."""
    users = evaluated_users(test)
    test_rows = test[users]
    model_recs = top_k_unseen(model, train, users, k)[0]
    baseline_recs = top_k_excluding(popularity_ranking(train), train[users], k)
    return {
        "users": users,
        "model_recs": model_recs,
        "baseline_recs": baseline_recs,
        "model": evaluate_recs(model_recs, test_rows),
        "baseline": evaluate_recs(baseline_recs, test_rows),
    }


def summary(result: dict[str, Any], users: int) -> dict[str, Any]:
    """Metrics at the largest k plus coverage and user count, rounded for stable JSON."""
    out: dict[str, Any] = {name: _round(result[name][-1]) for name in METRICS}
    out["coverage"] = _round(result["coverage"])
    out["users"] = int(users)
    return out


def ranking_csv(result: dict[str, Any]) -> str:
    """metrics/ranking_at_k.csv: one row per k = 1..K."""
    columns = ["k", *METRICS]
    top_k = len(result[METRICS[0]])
    lines = [",".join(columns)]
    for i in range(top_k):  # K rows (at most a few hundred), not users
        lines.append(",".join([str(i + 1)] + [f"{result[m][i]:.{DIGITS}f}" for m in METRICS]))
    return "\n".join(lines) + "\n"


def persona_codes(
    personas: np.ndarray, item_categories: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Integer codes for the persona share: (user group, item category, allowed table).

    A persona is categories joined by `_` (store personas use `category:style` parts, of
    which the category counts). Empty personas get group -1. Only the distinct personas
    (a few dozen) are parsed in Python.
    """
    groups, user_group = np.unique(personas, return_inverse=True)
    labels, item_cat = np.unique(item_categories, return_inverse=True)
    allowed = np.zeros((groups.size, labels.size), dtype=bool)
    label_index = {label: i for i, label in enumerate(labels.tolist())}
    for g, persona in enumerate(groups.tolist()):
        for part in persona.split("_"):
            cat = label_index.get(part.split(":", 1)[0].strip())
            if cat is not None:
                allowed[g, cat] = True
    empty = np.array([not p.strip() for p in groups.tolist()], dtype=bool)
    user_group = np.where(empty[user_group], -1, user_group)
    return user_group.astype(np.int64), item_cat.astype(np.int64), allowed


def _round(value: float) -> float:
    return round(float(value), DIGITS)


def benchmark_evaluate(
    train: sp.csr_matrix, test: sp.csr_matrix, model: AlternatingLeastSquares, k: int
) -> dict[str, float]:
    """Seconds for our full scoring (model + baseline + every metric at every k) versus
    `implicit.evaluation.ranking_metrics_at_k` alone on the same model, same process."""
    from implicit.evaluation import ranking_metrics_at_k

    start = time.perf_counter()
    ours = score_model_and_baseline(model, train, test, k)
    ours_seconds = time.perf_counter() - start

    start = time.perf_counter()
    with threadpool_limits(1, "blas"):
        theirs = ranking_metrics_at_k(
            model, train, test, K=k, show_progress=False, num_threads=model.num_threads
        )
    implicit_seconds = time.perf_counter() - start
    return {
        "users": int(ours["users"].size),
        "k": int(k),
        "ours_seconds": ours_seconds,
        "implicit_seconds": implicit_seconds,
        "map_ours": float(ours["model"]["map_at_k"][-1]),
        "map_implicit": float(theirs["map"]),
        "ndcg_ours": float(ours["model"]["ndcg_at_k"][-1]),
        "ndcg_implicit": float(theirs["ndcg"]),
    }


def score_served(
    train: sp.csr_matrix,
    test: sp.csr_matrix,
    scored: dict[str, Any],
    fallback: np.ndarray,
    k: int,
) -> dict[str, Any]:
    """What the bundle serves: the model, except the fallback for users with no training item.

    The headline metrics score the model on every user with held-out pairs, as
    `implicit.evaluation` does, including users whose every pair was held out: their factors
    are zero and their ranking is arbitrary. The bundle gives those users the fallback, so
    this is the number that predicts what ships.
    """
    users = scored["users"]
    no_history = np.diff(train.indptr)[users] == 0
    recs = scored["model_recs"].copy()
    recs[no_history] = top_k_excluding(fallback, train[users[no_history]], k)
    out = summary(evaluate_recs(recs, test[users]), users.size)
    out["fallback_users"] = int(no_history.sum())
    return out


def score_cold_start(
    train: sp.csr_matrix,
    test: sp.csr_matrix,
    scored: dict[str, Any],
    fallback: np.ndarray,
    k: int,
    segments: np.ndarray | None = None,
) -> dict[str, Any]:
    """The fallback list vs most-popular (and the model) on users with <= 1 training item.

    Both lists skip the user's training item, exactly like the main evaluation. With
    `segments` (one label per evaluated user, e.g. web / store) each segment is also scored
    on its own: one list serves them all, and a pooled number hides who it serves well.
    """
    rows = np.flatnonzero(np.diff(train.indptr)[scored["users"]] <= 1)
    cold = scored["users"][rows]
    size = int(fallback.size)
    if cold.size == 0:
        return {"users": 0, "size": size}
    test_rows = test[cold]
    fallback_recs = top_k_excluding(fallback, train[cold], k)
    out = summary(evaluate_recs(fallback_recs, test_rows), cold.size)
    out["size"] = size
    out["baseline"] = summary(evaluate_recs(scored["baseline_recs"][rows], test_rows), cold.size)
    out["model"] = summary(evaluate_recs(scored["model_recs"][rows], test_rows), cold.size)
    if segments is not None:
        labels = segments[rows]
        out["segments"] = {}
        for label in np.unique(labels[labels != ""]):  # a handful of segments, not users
            part = labels == label
            seg_rows = test_rows[np.flatnonzero(part)]
            fb = evaluate_recs(fallback_recs[part], seg_rows)
            mp = evaluate_recs(scored["baseline_recs"][rows][part], seg_rows)
            out["segments"][str(label)] = {
                "users": int(part.sum()),
                "map_at_k": _round(fb["map_at_k"][-1]),
                "hit_rate_at_k": _round(fb["hit_rate_at_k"][-1]),
                "baseline_map_at_k": _round(mp["map_at_k"][-1]),
                "baseline_hit_rate_at_k": _round(mp["hit_rate_at_k"][-1]),
            }
    return out


def evaluate_model(
    model: AlternatingLeastSquares,
    train: sp.csr_matrix,
    test: sp.csr_matrix,
    k: int,
    fallback: np.ndarray,
    segments: np.ndarray | None = None,
    personas: np.ndarray | None = None,
    categories: np.ndarray | None = None,
) -> tuple[dict[str, Any], str]:
    """Every metric of metrics.json and the per-k CSV, for a model on a train/test split.

    `segments` and `personas` hold one label per user row (e.g. web/store, the persona);
    `categories` one per item column. Each is optional: metadata a log may not have.
    """
    scored = score_model_and_baseline(model, train, test, k)
    users = scored["users"]
    metrics: dict[str, Any] = summary(scored["model"], users.size)
    metrics["k"] = k
    metrics["baseline"] = summary(scored["baseline"], users.size)
    metrics["fallback"] = score_cold_start(
        train, test, scored, fallback, k, None if segments is None else segments[users]
    )
    metrics["served"] = score_served(train, test, scored, fallback, k)
    if personas is not None and categories is not None:
        group, item_cat, allowed = persona_codes(personas[users], categories)
        if (group >= 0).any():
            metrics["persona"] = {
                name: _round(category_share(scored[f"{name}_recs"], group, item_cat, allowed))
                for name in ("model", "baseline")
            } | {"users": int((group >= 0).sum())}
    return metrics, ranking_csv(scored["model"])
