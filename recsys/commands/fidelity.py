"""How faithful is the synthetic shop? Every row of the reference's "Fidelity targets" table.

Not a test: it prints, for each seed, our figure next to the reference's and the difference, and
whether it is within the target (learnability: ALS 100 iterations 0.112 +- 0.008, item-kNN BM25
0.132 +- 0.01, most popular 0.030 +- 0.005; structure: 10% relative, or 2 points for shares).
For a generated shop it then prints the ceiling: the oracle's MAP@20 (each user's unseen items
ranked by their probability of being held out, given the training pairs and the generator's own
state, `recsys.fidelity.oracle_scores`) next to each model's, with 95% bootstrap intervals over
users, and the share of the ceiling each model reaches. Learnability is scored the same way for
every model, by the project's own routine (`recsys.metrics.evaluate_recs`): confidence = summed
article event scores, 20% of the pairs held out at random, the user's training items excluded,
AP@20 / min(20, |held-out|) averaged over every user with a held-out pair.

    recsys fidelity                     # params.yaml's shop (seed 42, 100k users)
    recsys fidelity --seeds 42 7 2024   # three shops, one column each
    recsys fidelity --data              # the tables in data/ as they are
    recsys fidelity --structure-only    # skip the models (a few seconds)
    recsys fidelity --skip-als          # every model but ALS (its fit is minutes per shop)
"""

from __future__ import annotations

import dataclasses
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recsys.bootstrap import interval, paired_difference
from recsys.bootstrap import verdict as paired_verdict
from recsys.commands import CommandParser
from recsys.errors import StageError
from recsys.events import ImportParams
from recsys.families.als import AlsParams, make_model, model_from_factors
from recsys.fidelity import (
    ARTICLE_SCORES,
    cooccurrence,
    log_from_frames,
    oracle_scores,
    pair_shapes,
    top_k_scored,
)
from recsys.metrics import evaluate_recs, per_user_metrics
from recsys.params import load
from recsys.paths import INTERACTIONS, ITEMS, USERS
from recsys.ranking import popularity_ranking, top_k_excluding, top_k_unseen
from recsys.shop import ShopParams, ShopState, build_shop, shop_state
from recsys.split import random_split
from recsys.threads import stage_threads

K = 20
HOLD_OUT, SPLIT_SEED = 0.2, 7
ARTICLE_ALS = AlsParams(
    factors=200, regularization=0.01, alpha=1.0, iterations=100, use_cg=True,
    random_state=42, track_loss=False,
)  # fmt: skip
SHORT_ITERATIONS = 15
BOOTSTRAP_SAMPLES, BOOTSTRAP_SEED = 1000, 0
# the ceiling table's models (printed by the share of the ceiling they reach)
MODELS = {
    "oracle": "oracle (the ceiling)",
    "als_100": "ALS, 100 iterations",
    "als_15": "ALS, 15 iterations",
    "bm25": "item-kNN BM25",
    "cosine": "item-kNN cosine",
    "popular": "most popular",
}

# (key, label, reference, kind): kind "map" has an absolute tolerance, "share" 2 points,
# "rel" 10% relative, "info" no target.
ROWS = [
    ("als_100", "ALS f200 reg 0.01 alpha 1, 100 iterations: MAP@20", 0.112, ("abs", 0.008)),
    ("als_15", "same, 15 iterations", 0.115, ("info",)),
    ("bm25", "item-kNN BM25 (K=100): MAP@20", 0.132, ("abs", 0.01)),
    ("cosine", "item-kNN cosine (K=100): MAP@20", 0.103, ("info",)),
    ("popular", "most popular: MAP@20", 0.030, ("abs", 0.005)),
    ("cooccurring_items", "co-occurring items per item (same category)", 19.7, ("rel",)),
    ("cooccurring_top8_share", "  top-8 share", 0.66, ("share",)),
    ("follow_ups", "follow-up items per first item, genders pooled", 6.6, ("rel",)),
    ("follow_ups_top4_share", "  top-4 share", 0.77, ("share",)),
    ("mf_link_overlap", "M/F overlap of co-occurrence links (no gendered items)", 0.04, ("share",)),
    ("single_style_groups", "(user, category) groups of >= 2 items in one style", 0.25, ("share",)),
    ("rows_per_pair", "rows per pair: mean", 3.35, ("rel",)),
    ("pairs_with_4_rows", "  share of pairs with exactly 4 rows", 0.166, ("share",)),
    ("pairs_with_funnel", "pairs with any funnel event", 0.325, ("share",)),
    ("confidence_1", "confidence: share of pairs = 1", 0.009, ("share",)),
    ("confidence_3", "  share = 3", 0.286, ("share",)),
    ("confidence_4", "  share = 4", 0.085, ("share",)),
    ("confidence_max", "  max", 40, ("rel",)),
    ("store_items_per_user", "store users: distinct items per user", 1.57, ("rel",)),
    ("store_pair_share", "  share of pairs", 0.062, ("share",)),
    ("users_per_item_gini", "users per item: Gini", 0.209, ("rel",)),
    ("top1pct_item_pair_share", "  top-1% items' share of pairs", 0.069, ("share",)),
    ("items_per_user", "distinct items per user: mean", 2.54, ("rel",)),
    ("users_with_1", "  share with 1", 0.234, ("share",)),
    ("users_with_2", "  share with 2", 0.308, ("share",)),
    ("users_with_3_5", "  share with 3-5", 0.437, ("share",)),
    ("users_with_over_5", "  share with > 5", 0.021, ("share",)),
]


def shop_params(seed: int | None) -> ShopParams:
    """params.yaml's synthetic shop, with another seed if given."""

    def parse(section):
        section.ignore(["source", *ImportParams.KEYS])
        return ShopParams.from_section(section)

    params = load(parse, "generate", Path("params.yaml"))
    return params if seed is None else dataclasses.replace(params, seed=seed)


def read_tables() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    read = {"dtype": str, "keep_default_na": False, "na_values": [""]}
    return tuple(pd.read_csv(p, **read) for p in (ITEMS, USERS, INTERACTIONS))


def split(log) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """Summed event scores per pair, then 20% of the pairs held out at random."""
    matrix = sp.csr_matrix(
        (log.score, (log.user, log.item)), shape=(log.n_users, log.n_items), dtype=np.float32
    )
    matrix.sum_duplicates()
    return random_split(matrix, HOLD_OUT, SPLIT_SEED)


def map_at_k(recs: np.ndarray, test: sp.csr_matrix, users: np.ndarray) -> float:
    return float(evaluate_recs(recs, test[users])["map_at_k"][K - 1])


def learnability(
    log, threads: int, state: ShopState | None = None, als: bool = True
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Held-out MAP@20 of ALS (article config, 15 and 100 iterations), kNN, most popular and,
    given the generator's state, the oracle; with each model's AP@20 per evaluated user."""
    from implicit.nearest_neighbours import BM25Recommender, CosineRecommender

    train, test = split(log)
    users = np.flatnonzero(np.diff(test.indptr))
    recs = als_recs(train, users, threads) if als else {}
    for key, cls in (("bm25", BM25Recommender), ("cosine", CosineRecommender)):
        knn = cls(K=100, num_threads=threads)
        with warnings.catch_warnings():  # its own weighting hands it a COO matrix
            warnings.filterwarnings("ignore", "Method expects CSR input")
            knn.fit(train, show_progress=False)
        recs[key] = top_k_unseen(knn, train, users, K)[0]
    ranking = popularity_ranking(train)
    recs["popular"] = top_k_excluding(ranking, train[users], K)
    if state is not None:
        start = time.perf_counter()
        scores = oracle_scores(state, train, HOLD_OUT, slot_top=K)
        recs["oracle"] = top_k_scored(scores, train, users, K)
        print(f"  oracle {time.perf_counter() - start:.1f}s", file=sys.stderr)
    print(f"  {users.size:,} users evaluated", file=sys.stderr)
    out = {key: map_at_k(r, test, users) for key, r in recs.items()}
    per_user = {key: per_user_metrics(r, test[users])["ap"] for key, r in recs.items()}
    return out, per_user


def als_recs(train: sp.csr_matrix, users: np.ndarray, threads: int) -> dict[str, np.ndarray]:
    """Top-K of ALS with the article's config after 15 and 100 iterations."""
    from threadpoolctl import threadpool_limits

    recs: dict[str, np.ndarray] = {}
    # one fit serves both: the 15-iteration factors are a snapshot of the 100-iteration fit
    model = make_model(ARTICLE_ALS, threads)
    model.num_threads = threads
    early: dict[str, np.ndarray] = {}

    def snapshot(iteration: int, elapsed: float, loss: float | None) -> None:
        if iteration + 1 == SHORT_ITERATIONS:
            early["users"] = model.user_factors.copy()
            early["items"] = model.item_factors.copy()

    start = time.perf_counter()
    with threadpool_limits(1, "blas"):
        model.fit(train, show_progress=False, callback=snapshot)
    fit_s = time.perf_counter() - start
    for key, factors in (
        ("als_15", (early["users"], early["items"])),
        ("als_100", (model.user_factors, model.item_factors)),
    ):
        scorer = model_from_factors(*factors, threads)
        recs[key] = top_k_unseen(scorer, train, users, K)[0]
    print(f"  ALS fit {fit_s:.0f}s", file=sys.stderr)
    return recs


def verdict(value: float, reference: float, kind: tuple) -> str:
    if kind[0] == "abs":
        return "ok" if abs(value - reference) <= kind[1] + 1e-12 else "MISS"
    if kind[0] == "share":
        return "ok" if abs(value - reference) <= 0.02 + 1e-12 else "MISS"
    if kind[0] == "rel":
        return "ok" if abs(value - reference) <= 0.1 * abs(reference) else "MISS"
    return ""


def fmt(value: float, kind: tuple, key: str) -> str:
    if key.startswith(("als", "bm25", "cosine", "popular")):
        return f"{value:.3f}"
    if kind[0] == "share":
        return f"{100 * value:.1f}%"
    return f"{value:.3g}"


def main(argv: list[str] | None = None) -> None:
    parser = CommandParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--seeds", type=int, nargs="+", help="generate shops with these seeds")
    source.add_argument("--data", action="store_true", help="read data/ instead of generating")
    parser.add_argument("--structure-only", action="store_true", help="skip the models")
    parser.add_argument(
        "--skip-als", action="store_true", help="skip ALS, the slow model (minutes per shop)"
    )
    args = parser.parse_args(argv)
    if not Path("params.yaml").is_file():
        raise StageError("no params.yaml here; run `recsys fidelity` from the repository root")
    if args.data and not all(Path(p).is_file() for p in (ITEMS, USERS, INTERACTIONS)):
        raise StageError(f"--data reads {ITEMS}, {USERS} and {INTERACTIONS}; run `dvc repro` first")
    threads = stage_threads()

    columns: dict[str, dict[str, float]] = {}
    per_user: dict[str, dict[str, np.ndarray]] = {}
    for seed in [None] if args.data else (args.seeds or [None]):
        if args.data:
            label = "data/"
            items, users, events = read_tables()
        else:
            params = shop_params(seed)
            label = f"seed {params.seed}"
            print(f"{label}: generating {params.interactions:,} events...", file=sys.stderr)
            start = time.perf_counter()
            items, users, events = build_shop(params)
            print(f"  generated in {time.perf_counter() - start:.1f}s", file=sys.stderr)
        log = log_from_frames(events, items, users)
        values = {**cooccurrence(log), **pair_shapes(log)}
        if not args.structure_only:
            state = None if args.data else shop_state(params)
            scores, per_user[label] = learnability(log, threads, state, als=not args.skip_als)
            values |= scores
        columns[label] = values

    labels = list(columns)
    header = ["figure", "reference", *labels, "difference" if len(labels) == 1 else "worst diff"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    misses = 0
    for key, label, reference, kind in ROWS:
        if key not in columns[labels[0]]:
            continue
        cells, worst, verdicts = [], 0.0, []
        for name in labels:
            value = columns[name][key]
            cells.append(fmt(value, kind, key))
            worst = max(worst, value - reference, key=abs)
            verdicts.append(verdict(value, reference, kind))
        miss = "MISS" in verdicts
        misses += miss
        mark = " (outside target)" if miss else ""
        diff = f"{100 * worst:+.1f} pt" if kind[0] == "share" else f"{worst:+.3g}"
        print(f"| {label} | {fmt(reference, kind, key)} | {' | '.join(cells)} | {diff}{mark} |")
    print(f"\n{misses} of the rows with a target outside it", file=sys.stderr)
    if per_user and "oracle" in per_user[labels[0]]:
        print_ceiling(per_user)
    weights = ", ".join(f"{k} {v}" for k, v in ARTICLE_SCORES.items())
    print(f"(confidence = summed event scores: {weights})", file=sys.stderr)


def print_ceiling(per_user: dict[str, dict[str, np.ndarray]]) -> None:
    """Each model's MAP@20 [95% interval] per shop next to the oracle's, the share of the
    ceiling it reaches (mean over shops), and the paired gap of the best model to it."""
    labels = list(per_user)
    models = [key for key in MODELS if key in per_user[labels[0]]]
    ceiling = {name: float(per_user[name]["oracle"].mean()) for name in labels}
    share = {
        key: float(np.mean([per_user[n][key].mean() / ceiling[n] for n in labels]))
        for key in models
    }
    print("\nThe ceiling: MAP@20 [95% bootstrap interval over users]\n")
    header = ["model", *labels, "share of the ceiling"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for key in sorted(models, key=lambda k: -share[k]):
        cells = []
        for name in labels:
            ap = per_user[name][key]
            low, high = interval(ap, BOOTSTRAP_SAMPLES, BOOTSTRAP_SEED)
            cells.append(f"{ap.mean():.3f} [{float(low):.3f}, {float(high):.3f}]")
        print(f"| {MODELS[key]} | {' | '.join(cells)} | {100 * share[key]:.0f}% |")
    best = max((k for k in models if k != "oracle"), key=lambda k: share[k])
    print(f"\nthe best model ({MODELS[best]}) reaches {100 * share[best]:.0f}% of the ceiling")
    for name in labels:
        gap, low, high = paired_difference(
            per_user[name]["oracle"], per_user[name][best], BOOTSTRAP_SAMPLES, BOOTSTRAP_SEED
        )
        print(
            f"{name}: oracle - {MODELS[best]} = {gap:+.3f} [{low:+.3f}, {high:+.3f}], "
            f"{paired_verdict(low, high)}"
        )
