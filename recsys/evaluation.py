"""The offline evaluation protocol: who is scored, against what, and how it is summarised.

Every user with at least one held-out pair is scored (or a seeded sample of them,
`evaluate.max_users`, for logs of millions of users); each user's training items are
excluded from every ranking (a shop does not recommend what the user already has). AP@K
divides by min(K, |held-out|), as `implicit.evaluation` does: not the reference article's
comparison with a second model on 20 users. Also scored: the most-popular baseline, the
cold-start fallback on users with <= 1 training item, what the bundle actually serves, and
how often recommendations fall in the user's persona categories.

Error bars: MAP@K and NDCG@K get a 95% interval from a seeded bootstrap over users, and the
model's paired difference to most-popular (same users) its own interval
(`recsys.bootstrap`); the per-user values are written too, so two runs can be compared
user by user (`recsys compare`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from recsys.bootstrap import interval
from recsys.coldstart import ColdStart
from recsys.errors import StageError
from recsys.families.base import Family
from recsys.metrics import METRICS, category_share, evaluate_recs, per_user_metrics
from recsys.params import Section
from recsys.paths import ITEM_IDS, TEST, TRAIN, USER_IDS
from recsys.ranking import popularity_ranking, top_k_excluding

DIGITS = 6


@dataclass(frozen=True)
class EvaluateParams:
    """`evaluate:` params."""

    k: int
    bootstrap_samples: int = 1000
    bootstrap_seed: int = 0
    max_users: int = 0
    sample_seed: int = 0

    @classmethod
    def from_section(cls, s: Section) -> EvaluateParams:
        return cls(
            k=s.int("k", min=1, max=1000),
            bootstrap_samples=s.int("bootstrap_samples", 1000, min=100, max=100_000),
            bootstrap_seed=s.int("bootstrap_seed", 0, min=0, max=2**32 - 1),
            max_users=s.int("max_users", 0, min=0),
            sample_seed=s.int("sample_seed", 0, min=0, max=2**32 - 1),
        )


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


def evaluated_users(test: sp.csr_matrix, max_users: int = 0, seed: int = 0) -> np.ndarray:
    """Row indices of every user with at least one held-out pair, or, when there are more
    than `max_users` (> 0), a seeded uniform sample of that many of them, ascending.

    A sample of users keeps the full ranking over every item for each user it scores:
    sampling items instead biases the metrics (Krichene & Rendle, KDD 2020).
    """
    users = np.flatnonzero(np.diff(test.indptr) > 0)
    if 0 < max_users < users.size:
        rng = np.random.default_rng(seed)
        users = np.sort(rng.choice(users, size=max_users, replace=False))
    return users


def score_model_and_baseline(
    model: Family,
    train: sp.csr_matrix,
    test: sp.csr_matrix,
    k: int,
    users: np.ndarray | None = None,
) -> dict[str, Any]:
    """Recommendations and metrics (every k) of the model and most-popular on `users`
    (default: `evaluated_users(test)`), plus the seconds the model's own scoring took
    (`scoring_seconds`)."""
    if users is None:
        users = evaluated_users(test)
    test_rows = test[users]
    start = time.perf_counter()
    model_recs = model.recommend(users, train, k)[0]
    scoring_seconds = time.perf_counter() - start
    baseline_recs = top_k_excluding(popularity_ranking(train), train[users], k)
    return {
        "users": users,
        "model_recs": model_recs,
        "baseline_recs": baseline_recs,
        "model": evaluate_recs(model_recs, test_rows),
        "baseline": evaluate_recs(baseline_recs, test_rows),
        "scoring_seconds": scoring_seconds,
    }


def error_bars(
    scored: dict[str, Any], test: sp.csr_matrix, samples: int, seed: int
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """95% bootstrap intervals of MAP@K and NDCG@K and of the paired difference to
    most-popular, plus the per-user values (user row, AP, NDCG, baseline AP and NDCG).

    One resampling of users serves every statistic (same seed, same replicates), so the
    intervals are consistent with each other.
    """
    test_rows = test[scored["users"]]
    model = per_user_metrics(scored["model_recs"], test_rows)
    base = per_user_metrics(scored["baseline_recs"], test_rows)
    columns = np.stack(
        [model["ap"], model["ndcg"], model["ap"] - base["ap"], model["ndcg"] - base["ndcg"]],
        axis=1,
    )
    low, high = interval(columns, samples, seed)
    bars: dict[str, Any] = {}
    versus: dict[str, Any] = {}
    for i, name in enumerate(("map_at_k", "ndcg_at_k")):
        bars[f"{name}_ci_low"], bars[f"{name}_ci_high"] = _round(low[i]), _round(high[i])
        versus[name] = _round(columns[:, 2 + i].mean())
        versus[f"{name}_ci_low"] = _round(low[2 + i])
        versus[f"{name}_ci_high"] = _round(high[2 + i])
    bars["vs_baseline"] = versus
    per_user = {
        "user": scored["users"].astype(np.int32),
        "ap": model["ap"].astype(np.float32),
        "ndcg": model["ndcg"].astype(np.float32),
        "baseline_ap": base["ap"].astype(np.float32),
        "baseline_ndcg": base["ndcg"].astype(np.float32),
    }
    return bars, per_user


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
    train: sp.csr_matrix, test: sp.csr_matrix, model: Family, k: int
) -> dict[str, float]:
    """Seconds for our full scoring (model + baseline + every metric at every k) versus
    `implicit.evaluation.ranking_metrics_at_k` alone on the same model, same process
    (for families implicit has; NaN for the others)."""
    from implicit.evaluation import ranking_metrics_at_k

    start = time.perf_counter()
    ours = score_model_and_baseline(model, train, test, k)
    ours_seconds = time.perf_counter() - start
    result = {
        "users": int(ours["users"].size),
        "k": int(k),
        "ours_seconds": ours_seconds,
        "scoring_seconds": ours["scoring_seconds"],
        "map_ours": float(ours["model"]["map_at_k"][-1]),
        "ndcg_ours": float(ours["model"]["ndcg_at_k"][-1]),
        "implicit_seconds": float("nan"),
        "map_implicit": float("nan"),
        "ndcg_implicit": float("nan"),
    }
    theirs_model = model.implicit_model
    if theirs_model is None:
        return result
    start = time.perf_counter()
    with threadpool_limits(1, "blas"):
        theirs = ranking_metrics_at_k(
            theirs_model, train, test, K=k, show_progress=False,
            num_threads=getattr(theirs_model, "num_threads", 1),
        )  # fmt: skip
    result["implicit_seconds"] = time.perf_counter() - start
    result["map_implicit"] = float(theirs["map"])
    result["ndcg_implicit"] = float(theirs["ndcg"])
    return result


def score_served(
    train: sp.csr_matrix,
    test: sp.csr_matrix,
    scored: dict[str, Any],
    fallback: np.ndarray,
    k: int,
    cold_recs: np.ndarray | None = None,
) -> dict[str, Any]:
    """What the bundle serves: the model, except the fallback for users with no training item
    (or, given `cold_recs`, their cold-start lists: one row per such user, in user order).

    The headline metrics score the model on every user with held-out pairs, as
    `implicit.evaluation` does, including users whose every pair was held out: their factors
    are zero and their ranking is arbitrary. The bundle gives those users the fallback, so
    this is the number that predicts what ships.
    """
    users = scored["users"]
    no_history = np.diff(train.indptr)[users] == 0
    recs = scored["model_recs"].copy()
    if cold_recs is None:
        recs[no_history] = top_k_excluding(fallback, train[users[no_history]], k)
    else:
        recs[no_history] = cold_recs
    out = summary(evaluate_recs(recs, test[users]), users.size)
    out["fallback_users"] = int(no_history.sum())
    out["recs"] = recs  # popped by evaluate_model for the per-user values
    return out


def newcomer_recs(
    models: dict[str, ColdStart], attributes: dict[str, np.ndarray], users: np.ndarray, k: int
) -> dict[str, np.ndarray]:
    """Each cold-start model's top-k for `users` (rows with no training item, so nothing
    to exclude), from their attributes; -1 pads a list shorter than k."""
    out = {}
    for name, model in models.items():
        groups = model.groups_of({c: v[users] for c, v in attributes.items()}, users.size)
        recs = np.full((users.size, k), -1, dtype=np.int32)
        width = min(k, model.size)
        recs[:, :width] = model.lists[groups, :width]
        out[name] = recs
    return out


def score_newcomers(
    test: sp.csr_matrix,
    users: np.ndarray,
    recs: dict[str, np.ndarray],
    served: str,
    segments: np.ndarray | None,
    samples: int,
    seed: int,
) -> dict[str, Any]:
    """MAP@K with 95% intervals of every candidate on users with no training item (`recs`:
    name -> their recommendations), pooled and per segment, plus the paired difference of
    the `served` path to most-popular (same users, same bootstrap draws)."""
    out: dict[str, Any] = {"users": int(users.size), "served": served}
    if users.size == 0:
        return out
    names = list(recs)
    ap = np.stack([per_user_metrics(recs[n], test[users])["ap"] for n in names], axis=1)
    diff = ap[:, names.index(served)] - ap[:, names.index("popular")]
    out |= _newcomer_block(names, ap, diff, samples, seed)
    if segments is not None:
        out["segments"] = {}
        for label in np.unique(segments[segments != ""]):  # a handful of segments
            part = segments == label
            block = _newcomer_block(names, ap[part], diff[part], samples, seed)
            out["segments"][str(label)] = {"users": int(part.sum())} | block
    return out


def _newcomer_block(
    names: list[str], ap: np.ndarray, diff: np.ndarray, samples: int, seed: int
) -> dict[str, Any]:
    low, high = interval(np.column_stack([ap, diff]), samples, seed)
    out: dict[str, Any] = {
        name: {
            "map_at_k": _round(ap[:, i].mean()),
            "map_at_k_ci_low": _round(low[i]),
            "map_at_k_ci_high": _round(high[i]),
            "hit_rate_at_k": _round((ap[:, i] > 0).mean()),
        }
        for i, name in enumerate(names)
    }
    out["served_vs_popular"] = {
        "map_at_k": _round(diff.mean()),
        "map_at_k_ci_low": _round(low[-1]),
        "map_at_k_ci_high": _round(high[-1]),
    }
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
    model: Family,
    train: sp.csr_matrix,
    test: sp.csr_matrix,
    params: EvaluateParams,
    fallback: np.ndarray,
    segments: np.ndarray | None = None,
    personas: np.ndarray | None = None,
    categories: np.ndarray | None = None,
    cold_start: dict[str, ColdStart] | None = None,
    attributes: dict[str, np.ndarray] | None = None,
    served: str = "apportioned",
) -> tuple[dict[str, Any], str, dict[str, np.ndarray], float]:
    """Every metric of metrics.json, the per-k CSV, the per-user values and the model's
    scoring seconds, for a model on a train/test split.

    `segments` and `personas` hold one label per user row (e.g. web/store, the persona);
    `categories` one per item column. Each is optional: metadata a log may not have.
    `cold_start` (strategy name -> model, `recsys.coldstart`) with the users' `attributes`
    scores every strategy on users with no training item (`cold_start` in the metrics) and
    serves them the `served` one; without it they are served `fallback`.
    """
    k = params.k
    users = evaluated_users(test, params.max_users, params.sample_seed)
    scored = score_model_and_baseline(model, train, test, k, users)
    metrics: dict[str, Any] = summary(scored["model"], users.size)
    held_out_users = int(np.count_nonzero(np.diff(test.indptr)))
    if users.size < held_out_users:  # named only when it applies: 1x metrics are unchanged
        metrics["sample"] = {
            "users": int(users.size),
            "of_users": held_out_users,
            "seed": params.sample_seed,
        }
    bars, per_user = error_bars(scored, test, params.bootstrap_samples, params.bootstrap_seed)
    metrics |= bars
    metrics["k"] = k
    metrics["baseline"] = summary(scored["baseline"], users.size)
    metrics["fallback"] = score_cold_start(
        train, test, scored, fallback, k, None if segments is None else segments[users]
    )
    no_history = users[np.diff(train.indptr)[users] == 0]
    cold_recs = None
    if cold_start:
        candidates = newcomer_recs(cold_start, attributes or {}, no_history, k)
        cold_recs = candidates[served]
        candidates["model"] = scored["model_recs"][np.diff(train.indptr)[users] == 0]
        metrics["cold_start"] = score_newcomers(
            test,
            no_history,
            candidates,
            served,
            None if segments is None else segments[no_history],
            params.bootstrap_samples,
            params.bootstrap_seed,
        )
    metrics["served"] = score_served(train, test, scored, fallback, k, cold_recs)
    served_recs = metrics["served"].pop("recs")
    served_user = per_user_metrics(served_recs, test[users])
    low, high = interval(
        served_user["ap"][:, None], params.bootstrap_samples, params.bootstrap_seed
    )
    metrics["served"]["map_at_k_ci_low"] = _round(low[0])
    metrics["served"]["map_at_k_ci_high"] = _round(high[0])
    per_user["served_ap"] = served_user["ap"].astype(np.float32)
    per_user["served_ndcg"] = served_user["ndcg"].astype(np.float32)
    if personas is not None and categories is not None:
        group, item_cat, allowed = persona_codes(personas[users], categories)
        if (group >= 0).any():
            metrics["persona"] = {
                name: _round(category_share(scored[f"{name}_recs"], group, item_cat, allowed))
                for name in ("model", "baseline")
            } | {"users": int((group >= 0).sum())}
    return metrics, ranking_csv(scored["model"]), per_user, scored["scoring_seconds"]
