"""Stage `evaluate`: score ALS and the most-popular baseline on the held-out pairs.

Every user with at least one held-out pair is scored; each user's training items are
excluded from both rankings (a shop does not recommend what the user already has). AP@K
divides by min(K, |held-out|), as `implicit.evaluation` does: not the reference article's
comparison with a second model on 20 users. Also scored: the cold-start fallback list on
users with <= 1 training item, and how often recommendations fall in the user's persona
categories (when data/users.csv has PERSONA).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import scipy.sparse as sp
from implicit.cpu.als import AlternatingLeastSquares
from threadpoolctl import threadpool_limits

from stages.common import (
    ITEM_IDS,
    ITEMS,
    METRICS_JSON,
    MODEL,
    RANKING_AT_K,
    TEST,
    TRAIN,
    USER_IDS,
    USERS,
    Params,
    StageError,
    aligned,
    load_csr,
    load_factors,
    load_ids,
    read_id_table,
    run_stage,
    worker_threads,
    write_json,
    write_text,
)
from stages.fallback import build_fallback, load_item_categories
from stages.ranking import (
    METRICS,
    category_share,
    evaluate_recs,
    model_from_factors,
    popularity_ranking,
    top_k_excluding,
    top_k_unseen,
)

DIGITS = 6


# --------------------------------------------------------------------------- pure parts


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


# --------------------------------------------------------------------------- benchmark


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


# --------------------------------------------------------------------------- stage


def main() -> None:
    params = Params.load("evaluate")
    k = params.int("k", min=1, max=1000)
    params.check_unknown()
    fallback_size = Params.load("export").int("fallback_size", min=1)

    train = load_csr(TRAIN)
    test = load_csr(TEST)
    if test.shape != train.shape:
        raise StageError(f"{TEST}: shape {test.shape} differs from {TRAIN} {train.shape}")
    n_items = train.shape[1]
    if k > n_items:
        raise StageError(f"params.yaml: evaluate.k = {k}; expected <= {n_items} (items)")
    if test.nnz == 0:
        raise StageError(f"{TEST}: no held-out pairs; check mask.fraction")
    user_ids = load_ids(USER_IDS, "USER_ID")
    item_ids = load_ids(ITEM_IDS, "ITEM_ID")
    if (user_ids.size, item_ids.size) != train.shape:
        raise StageError(f"{USER_IDS} / {ITEM_IDS} do not match {TRAIN} {train.shape}")
    categories = load_item_categories(ITEMS, item_ids)
    users_frame = read_id_table(USERS, "USER_ID", ["PERSONA", "SEGMENT"])
    user_factors, item_factors = load_factors(MODEL, *train.shape)

    model = model_from_factors(user_factors, item_factors, worker_threads())
    scored = score_model_and_baseline(model, train, test, k)
    users = scored["users"]
    metrics: dict[str, Any] = summary(scored["model"], users.size)
    metrics["k"] = k
    metrics["baseline"] = summary(scored["baseline"], users.size)

    segments = (
        aligned(users_frame, "USER_ID", "SEGMENT", user_ids[users])
        if "SEGMENT" in users_frame
        else None
    )
    fallback = build_fallback(train, categories, fallback_size)
    metrics["fallback"] = score_cold_start(train, test, scored, fallback, k, segments)
    metrics["served"] = score_served(train, test, scored, fallback, k)
    if "PERSONA" in users_frame and categories is not None:
        personas = aligned(users_frame, "USER_ID", "PERSONA", user_ids[users])
        group, item_cat, allowed = persona_codes(personas, categories)
        if (group >= 0).any():
            metrics["persona"] = {
                "model": _round(category_share(scored["model_recs"], group, item_cat, allowed)),
                "baseline": _round(
                    category_share(scored["baseline_recs"], group, item_cat, allowed)
                ),
                "users": int((group >= 0).sum()),
            }

    print(
        f"evaluate: {users.size} users, MAP@{k} {metrics['map_at_k']:.4f} "
        f"(most popular {metrics['baseline']['map_at_k']:.4f})"
    )
    write_text(RANKING_AT_K, ranking_csv(scored["model"]))
    write_json(METRICS_JSON, metrics)


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


if __name__ == "__main__":
    run_stage(main)
