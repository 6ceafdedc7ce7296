"""Stage `evaluate`: score the model, most-popular and the fallback on held-out pairs."""

from recsys.cli import run_stage
from recsys.coldstart import STRATEGIES, ColdStartParams, build_coldstart, replace_strategy
from recsys.evaluation import EvaluateParams, check_split, evaluate_model
from recsys.fallback import ExportParams, build_fallback, load_item_categories
from recsys.families import load_model, load_model_params, model_file
from recsys.ids import aligned_columns, load_ids
from recsys.io import load_csr, md5sum, write_json, write_npz, write_text
from recsys.params import load
from recsys.paths import (
    ITEM_IDS,
    ITEMS,
    METRICS_JSON,
    PER_USER,
    RANKING_AT_K,
    TEST,
    TRAIN,
    USER_IDS,
    USERS,
)
from recsys.threads import stage_threads


def main() -> None:
    params = load(EvaluateParams.from_section, "evaluate")
    kind = load_model_params().type
    fallback_size = load(ExportParams.from_section, "export").fallback_size
    cold = load(ColdStartParams.from_section, "coldstart", optional=True)
    threads = stage_threads()
    train, test = load_csr(TRAIN), load_csr(TEST)
    user_ids, item_ids = load_ids(USER_IDS, "USER_ID"), load_ids(ITEM_IDS, "ITEM_ID")
    check_split(train, test, user_ids, item_ids, params.k)
    categories = load_item_categories(ITEMS, item_ids)
    wanted = list(dict.fromkeys(["PERSONA", "SEGMENT", *cold.columns]))
    columns = aligned_columns(USERS, "USER_ID", wanted, user_ids)
    attributes = {c: columns[c] for c in cold.columns if c in columns}
    # every strategy, so the metrics set the served one beside the others on the same users
    cold_start = {
        name: build_coldstart(
            train, attributes, replace_strategy(cold, name), fallback_size, categories
        )
        for name in STRATEGIES
    }
    model = load_model(model_file(kind), kind, train.shape, threads)

    metrics, per_k, per_user, seconds = evaluate_model(
        model,
        train,
        test,
        params,
        build_fallback(train, categories, fallback_size),
        segments=columns.get("SEGMENT"),
        personas=columns.get("PERSONA"),
        categories=categories,
        cold_start=cold_start,
        attributes=attributes,
        served=cold.strategy,
    )
    write_text(RANKING_AT_K, per_k)
    write_json(METRICS_JSON, metrics)
    # the held-out pairs' hash: per-user values pair up across runs only on the same split
    write_npz(PER_USER, k=params.k, test_md5=md5sum(TEST), **per_user)
    print(
        f"evaluate: {kind}, {metrics['users']:,} users, MAP@{params.k} {metrics['map_at_k']:.4f} "
        f"[{metrics['map_at_k_ci_low']:.4f}, {metrics['map_at_k_ci_high']:.4f}] "
        f"(most popular {metrics['baseline']['map_at_k']:.4f}); served "
        f"{metrics['served']['map_at_k']:.4f} ({cold.strategy} for "
        f"{metrics['served']['fallback_users']:,} users with no history); scoring "
        f"{seconds:.2f}s, threads={threads}"
    )


if __name__ == "__main__":
    run_stage(main)
