"""Measure whether blending the model with the cold-start ranking helps users with one or
two training items (issue: "use it only if it does").

Not a test: it prints figures from the workspace's pipeline outputs (run `dvc repro` first),
on the evaluated users with 1 or 2 training items. Each user's model top-`pool` and their
group's cold-start list are fused by weighted reciprocal rank,

    score(i) = (1 - w) / (c + rank_model(i)) + w / (c + rank_group(i)),

training items excluded, and the top-K scored against the held-out pairs. The baseline is
w = 0 (the model alone), measured in the same run on the same users; each weight's change
has a paired bootstrap interval (the evaluate stage's own seeds).

    python scripts/bench_coldstart.py [--weights 0 0.1 0.2 0.3 0.5] [--pool 100]
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import scipy.sparse as sp

from recsys.bootstrap import paired_difference, verdict
from recsys.coldstart import ColdStartParams, build_coldstart, load_user_attributes
from recsys.evaluation import EvaluateParams, evaluated_users
from recsys.fallback import load_item_categories
from recsys.families import load_model, load_model_params, model_file
from recsys.ids import load_ids
from recsys.io import load_csr
from recsys.metrics import per_user_metrics
from recsys.params import load
from recsys.paths import ITEM_IDS, ITEMS, TEST, TRAIN, USER_IDS, USERS

RRF_C = 60.0  # the usual reciprocal-rank-fusion constant


def fuse(
    model_recs: np.ndarray, group_recs: np.ndarray, train_rows: sp.csr_matrix, w: float, k: int
) -> np.ndarray:
    """Top-k of the weighted reciprocal-rank fusion per user (vectorised; sparse, never a
    users x items matrix); -1 pads a row with fewer than k candidates."""
    n_users, n_items = train_rows.shape
    ranks = np.arange(model_recs.shape[1], dtype=np.float64)
    g_ranks = np.arange(group_recs.shape[1], dtype=np.float64)
    rows = np.concatenate(
        [
            np.repeat(np.arange(n_users), model_recs.shape[1]),
            np.repeat(np.arange(n_users), group_recs.shape[1]),
        ]
    )
    cols = np.concatenate([model_recs.ravel(), group_recs.ravel()])
    data = np.concatenate(
        [np.tile((1 - w) / (RRF_C + ranks), n_users), np.tile(w / (RRF_C + g_ranks), n_users)]
    )
    keep = cols >= 0
    fused = sp.csr_matrix((data[keep], (rows[keep], cols[keep])), shape=(n_users, n_items))
    fused = fused - fused.multiply(train_rows != 0)  # never what the user already has
    fused.eliminate_zeros()
    coo = fused.tocoo()
    order = np.lexsort((coo.col, -coo.data, coo.row))
    row, col = coo.row[order], coo.col[order]
    start = np.searchsorted(row, np.arange(n_users))
    pos = np.arange(row.size) - start[row]
    out = np.full((n_users, k), -1, dtype=np.int32)
    top = pos < k
    out[row[top], pos[top]] = col[top]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=float, nargs="+", default=[0, 0.1, 0.2, 0.3, 0.5])
    parser.add_argument("--pool", type=int, default=100, help="model candidates per user")
    args = parser.parse_args(argv)
    params = load(EvaluateParams.from_section, "evaluate")
    cold_params = load(ColdStartParams.from_section, "coldstart", optional=True)
    kind = load_model_params().type
    train, test = load_csr(TRAIN), load_csr(TEST)
    user_ids, item_ids = load_ids(USER_IDS, "USER_ID"), load_ids(ITEM_IDS, "ITEM_ID")
    attributes = load_user_attributes(USERS, user_ids, cold_params.columns)
    cold = build_coldstart(
        train, attributes, cold_params, args.pool, load_item_categories(ITEMS, item_ids)
    )
    model = load_model(model_file(kind), kind, train.shape, threads=0)
    users = evaluated_users(test, params.max_users, params.sample_seed)
    history = np.diff(train.indptr)[users]
    print(
        f"{kind}, cold start {cold_params.strategy} over {', '.join(cold.columns)}; MAP@"
        f"{params.k} on users with 1 or 2 training items; w = weight of the group list"
    )
    for n_items in (1, 2):
        who = users[history == n_items]
        model_recs = model.recommend(who, train, args.pool)[0]
        groups = cold.groups_of({c: v[who] for c, v in attributes.items()}, who.size)
        group_recs = cold.lists[groups]
        aps = {
            w: per_user_metrics(fuse(model_recs, group_recs, train[who], w, params.k), test[who])[
                "ap"
            ]
            for w in args.weights
        }
        base = aps[args.weights[0]]
        print(f"  {n_items} training item(s), {who.size:,} users:")
        for w, ap in aps.items():
            mean, low, high = paired_difference(
                ap, base, params.bootstrap_samples, params.bootstrap_seed
            )
            print(
                f"    w={w:<4} MAP@{params.k} {ap.mean():.4f}  vs w={args.weights[0]}: "
                f"{mean:+.4f} [{low:+.4f}, {high:+.4f}] {verdict(low, high)}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
