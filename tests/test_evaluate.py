"""Stage `evaluate`: our vectorised metrics against implicit's own evaluation on a real
fitted ALS model, the baseline's exclusions, and the CLI's outputs and errors."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import yaml
from implicit.evaluation import ranking_metrics_at_k

from recsys.evaluation import benchmark_evaluate, persona_codes, score_model_and_baseline
from recsys.families.als import AlsModel, AlsParams, fit_als
from recsys.ids import save_ids
from recsys.io import save_csr
from recsys.metrics import METRICS, hits_matrix
from recsys.ranking import popularity_ranking, top_k_unseen
from tests.helpers import run_module

ALS = AlsParams(
    factors=8, regularization=0.05, alpha=5.0, iterations=5, use_cg=True, random_state=3
)
N_USERS, N_ITEMS, GROUPS = 400, 60, 6
CATEGORIES = np.array(["alpha", "beta", "gamma", "delta", "epsilon", "zeta"])


def split_matrix(seed: int = 0) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """A clustered users x items matrix (users favour their group's items), 25% held out."""
    rng = np.random.default_rng(seed)
    per_user = rng.integers(1, 7, N_USERS)
    rows = np.repeat(np.arange(N_USERS), per_user)
    own = (rows % GROUPS) + GROUPS * rng.integers(0, N_ITEMS // GROUPS, rows.size)
    cols = np.where(rng.random(rows.size) < 0.8, own, rng.integers(0, N_ITEMS, rows.size))
    full = sp.coo_matrix(
        (rng.integers(1, 6, rows.size).astype(np.float32), (rows, cols)), shape=(N_USERS, N_ITEMS)
    ).tocsr()
    full.sum_duplicates()
    coo = full.tocoo()
    held = rng.random(coo.nnz) < 0.25

    def part(mask: np.ndarray) -> sp.csr_matrix:
        m = sp.csr_matrix(
            (coo.data[mask], (coo.row[mask], coo.col[mask])), shape=full.shape, dtype=np.float32
        )
        m.sort_indices()
        return m

    return part(~held), part(held)


@pytest.fixture(scope="module")
def fitted() -> tuple[sp.csr_matrix, sp.csr_matrix, np.ndarray, np.ndarray]:
    train, test = split_matrix()
    users, items, _ = fit_als(train, ALS, threads=1, show_progress=False)
    return train, test, users, items


@pytest.mark.parametrize("k", [1, 5, 20])
def test_map_and_ndcg_equal_implicits_evaluation(fitted, k: int) -> None:
    train, test, user_factors, item_factors = fitted
    model = AlsModel.from_factors(user_factors, item_factors, threads=1)
    ours = score_model_and_baseline(model, train, test, k)["model"]
    theirs = ranking_metrics_at_k(model.implicit_model, train, test, K=k, show_progress=False)
    assert ours["map_at_k"][-1] == pytest.approx(theirs["map"], abs=1e-6)
    assert ours["ndcg_at_k"][-1] == pytest.approx(theirs["ndcg"], abs=1e-6)
    # A fitted model on clustered data must find something, or the comparison is vacuous.
    assert theirs["map"] > 0.01


def test_every_k_prefix_equals_implicit_at_that_k(fitted) -> None:
    train, test, user_factors, item_factors = fitted
    # Users whose pairs were all held out have zero factors, so every item ties and
    # implicit's top-2 need not be the first two of its top-10: compare the others.
    has_train = (train.getnnz(axis=1) > 0).astype(np.float32)
    test = sp.csr_matrix(sp.diags(has_train) @ test)
    test.eliminate_zeros()
    model = AlsModel.from_factors(user_factors, item_factors, threads=1)
    ours = score_model_and_baseline(model, train, test, 10)["model"]
    for k in (2, 7):
        theirs = ranking_metrics_at_k(model.implicit_model, train, test, K=k, show_progress=False)
        assert ours["map_at_k"][k - 1] == pytest.approx(theirs["map"], abs=1e-6)
        assert ours["ndcg_at_k"][k - 1] == pytest.approx(theirs["ndcg"], abs=1e-6)


def test_model_beats_most_popular_on_clustered_data(fitted) -> None:
    train, test, user_factors, item_factors = fitted
    model = AlsModel.from_factors(user_factors, item_factors, threads=1)
    scored = score_model_and_baseline(model, train, test, 10)
    assert scored["model"]["map_at_k"][-1] > scored["baseline"]["map_at_k"][-1]


def test_recommendations_exclude_training_items(fitted) -> None:
    train, test, user_factors, item_factors = fitted
    model = AlsModel.from_factors(user_factors, item_factors, threads=1)
    scored = score_model_and_baseline(model, train, test, 10)
    users = scored["users"]
    np.testing.assert_array_equal(users, np.flatnonzero(test.getnnz(axis=1)))
    seen = train[users]
    assert not hits_matrix(scored["baseline_recs"], seen).any()
    assert not hits_matrix(scored["model_recs"], seen).any()
    # Baseline = the popularity order with the user's training items removed.
    ranking = popularity_ranking(train).tolist()
    for row in (0, len(users) // 2, len(users) - 1):
        own = set(seen[row].indices.tolist())
        want = [i for i in ranking if i not in own][:10]
        np.testing.assert_array_equal(scored["baseline_recs"][row], want)


@pytest.mark.parametrize("k", [3, 20])
def test_recommend_equals_implicits_filtered_recommend(fitted, k: int) -> None:
    train, test, user_factors, item_factors = fitted
    model = AlsModel.from_factors(user_factors, item_factors, threads=1)
    users = np.flatnonzero(test.getnnz(axis=1))
    ours = top_k_unseen(model.implicit_model, train, users, k)[0]
    ids, _ = model.implicit_model.recommend(
        users, train[users], N=k, filter_already_liked_items=True
    )
    np.testing.assert_array_equal(ours, ids)


def test_recommend_marks_slots_beyond_the_unseen_items_as_empty(fitted) -> None:
    _, _, user_factors, item_factors = fitted
    model = AlsModel.from_factors(user_factors[:2], item_factors[:5], threads=1)
    train = sp.csr_matrix(np.array([[1, 1, 1, 0, 0], [0, 0, 0, 0, 0]], dtype=np.float32))
    recs = top_k_unseen(model.implicit_model, train, np.array([0, 1]), 4)[0]
    assert sorted(recs[0, :2].tolist()) == [3, 4]
    np.testing.assert_array_equal(recs[0, 2:], [-1, -1])
    assert sorted(recs[1].tolist()) == sorted(set(recs[1].tolist()))
    assert (recs[1] >= 0).all()


def test_persona_codes_parse_web_and_store_personas() -> None:
    personas = np.array(
        [
            "furniture_homedecor_housewares",
            "food service:pizza_cold dispensed:fountain-carbonated_salty snacks:nuts/seeds",
            "",
            "furniture_homedecor_housewares",
        ]
    )
    items = np.array(["furniture", "food service", "books", "salty snacks", "homedecor", ""])
    group, cat, allowed = persona_codes(personas, items)
    assert group[2] == -1 and group[0] == group[3] and group[0] != group[1]

    def allowed_items(user: int) -> set[str]:
        return {str(items[j]) for j in range(items.size) if allowed[group[user], cat[j]]}

    assert allowed_items(0) == {"furniture", "homedecor"}
    assert allowed_items(1) == {"food service", "salty snacks"}


def test_benchmark_reports_both_timings_and_matching_map(fitted) -> None:
    train, test, user_factors, item_factors = fitted
    model = AlsModel.from_factors(user_factors, item_factors, threads=1)
    result = benchmark_evaluate(train, test, model, 10)
    assert result["ours_seconds"] > 0 and result["implicit_seconds"] > 0
    assert result["map_ours"] == pytest.approx(result["map_implicit"], abs=1e-6)
    assert result["users"] == int((test.getnnz(axis=1) > 0).sum())


# --------------------------------------------------------------------------- the CLI


def write_project(repo: Path, fitted, *, persona: bool = True, k: int = 10) -> Path:
    """Inputs of `python -m stages.evaluate` as the upstream stages would leave them."""
    train, test, user_factors, item_factors = fitted
    data = repo / "data"
    data.mkdir(parents=True, exist_ok=True)
    save_csr(data / "train.npz", train)
    save_csr(data / "test.npz", test)
    user_ids = np.array([str(u + 1) for u in range(N_USERS)])
    item_ids = np.array([f"item-{i:03d}" for i in range(N_ITEMS)])
    save_ids(data / "user_ids.csv", "USER_ID", user_ids)
    save_ids(data / "item_ids.csv", "ITEM_ID", item_ids)
    # Item i belongs to category i % GROUPS, the group its users favour; users.csv lists
    # users in reverse so the evaluation must join by id, not by position.
    pd_items = "ITEM_ID,PRICE,CATEGORY_L1\n" + "".join(
        f"{item_ids[i]},1.0,{CATEGORIES[i % GROUPS]}\n" for i in range(N_ITEMS)
    )
    (data / "items.csv").write_text(pd_items)
    header = "USER_ID,AGE,GENDER" + (",PERSONA" if persona else "")
    lines = [header]
    for u in reversed(range(N_USERS)):
        own = CATEGORIES[u % GROUPS]
        other = CATEGORIES[(u + 1) % GROUPS]
        lines.append(f"{user_ids[u]},30,F" + (f",{own}_{other}_none" if persona else ""))
    (data / "users.csv").write_text("\n".join(lines) + "\n")
    AlsModel.from_factors(user_factors, item_factors, threads=1).save(repo / "models" / "als.npz")
    params = {
        "model": {"type": "als"},
        "evaluate": {"k": k},
        "export": {"top_n": 5, "fallback_size": 12},
        "runtime": {"threads": 0},  # 0: RECSYS_THREADS, set by run_evaluate
    }
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    return repo


def run_evaluate(cwd: Path) -> subprocess.CompletedProcess[str]:
    return run_module("stages.evaluate", cwd=cwd, RECSYS_THREADS="1")


def test_stage_writes_stable_metrics_matching_implicit(tmp_path: Path, fitted) -> None:
    repo = write_project(tmp_path, fitted)
    proc = run_evaluate(repo)
    assert proc.returncode == 0, proc.stderr
    metrics_bytes = (repo / "metrics" / "metrics.json").read_bytes()
    curve = (repo / "metrics" / "ranking_at_k.csv").read_text()
    assert run_evaluate(repo).returncode == 0
    assert (repo / "metrics" / "metrics.json").read_bytes() == metrics_bytes
    assert (repo / "metrics" / "ranking_at_k.csv").read_text() == curve

    metrics = json.loads(metrics_bytes)
    train, test, user_factors, item_factors = fitted
    model = AlsModel.from_factors(user_factors, item_factors, threads=1)
    theirs = ranking_metrics_at_k(model.implicit_model, train, test, K=10, show_progress=False)
    assert metrics["map_at_k"] == pytest.approx(theirs["map"], abs=1e-6)
    assert metrics["ndcg_at_k"] == pytest.approx(theirs["ndcg"], abs=1e-6)
    assert metrics["k"] == 10
    assert metrics["users"] == int((test.getnnz(axis=1) > 0).sum())
    for section in (metrics, metrics["baseline"]):
        assert set(METRICS) | {"coverage", "users"} <= set(section)
        assert all(0.0 <= section[m] <= 1.0 for m in (*METRICS, "coverage"))

    rows = curve.splitlines()
    assert rows[0] == "k,map_at_k,precision_at_k,recall_at_k,ndcg_at_k,hit_rate_at_k"
    assert [r.split(",")[0] for r in rows[1:]] == [str(k) for k in range(1, 11)]
    assert float(rows[-1].split(",")[1]) == pytest.approx(metrics["map_at_k"], abs=1e-6)

    fallback = metrics["fallback"]
    cold = (np.diff(train.indptr) <= 1) & (np.diff(test.indptr) >= 1)
    assert fallback["users"] == int(cold.sum()) > 0
    assert fallback["size"] == 12
    assert set(METRICS) <= set(fallback["baseline"]) and set(METRICS) <= set(fallback)
    no_history = int(((np.diff(train.indptr) == 0) & (np.diff(test.indptr) > 0)).sum())
    assert metrics["served"]["fallback_users"] == no_history
    assert set(METRICS) <= set(metrics["served"])

    # Users favour their own group's category, which their persona names first; an ALS
    # model fitted on that signal lands in persona categories more than the global top.
    persona = metrics["persona"]
    assert persona["users"] == metrics["users"]
    assert persona["model"] > persona["baseline"]


def test_served_metrics_give_users_without_history_the_fallback() -> None:
    from recsys.evaluation import score_served

    # user 0 has no training item (all held out), user 1 has one; 4 items
    train = sp.csr_matrix(np.array([[0, 0, 0, 0], [1, 0, 0, 0]], dtype=np.float32))
    test = sp.csr_matrix(np.array([[0, 0, 1, 0], [0, 1, 0, 0]], dtype=np.float32))
    scored = {"users": np.array([0, 1]), "model_recs": np.array([[3, 0], [1, 2]], np.int32)}
    served = score_served(train, test, scored, np.array([2, 3, 0, 1], np.int32), k=2)
    assert served["fallback_users"] == 1 and served["users"] == 2
    # user 0: the model's [3, 0] misses, the fallback's [2, 3] hits at rank 1; user 1 keeps
    # the model's [1, 2], a hit at rank 1: both users score AP 1
    assert served["map_at_k"] == pytest.approx(1.0)
    assert served["hit_rate_at_k"] == pytest.approx(1.0)


def test_stage_without_persona_column_omits_the_persona_share(tmp_path: Path, fitted) -> None:
    repo = write_project(tmp_path, fitted, persona=False)
    proc = run_evaluate(repo)
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((repo / "metrics" / "metrics.json").read_text())
    assert "persona" not in metrics and "fallback" in metrics


@pytest.mark.parametrize(
    ("k", "needle"),
    [(-1, "evaluate.k = -1"), (0, "evaluate.k = 0"), ("ten", "evaluate.k = 'ten'")],
)
def test_bad_k_fails_in_one_line_and_keeps_outputs(
    tmp_path: Path, fitted, k: object, needle: str
) -> None:
    repo = write_project(tmp_path, fitted, k=k)
    (repo / "metrics").mkdir()
    (repo / "metrics" / "metrics.json").write_text("previous")
    proc = run_evaluate(repo)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], lines
    assert (repo / "metrics" / "metrics.json").read_text() == "previous"


def test_k_above_the_catalogue_is_a_one_line_error(tmp_path: Path, fitted) -> None:
    repo = write_project(tmp_path, fitted, k=N_ITEMS + 1)
    proc = run_evaluate(repo)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: params.yaml: evaluate.k = {N_ITEMS + 1}; expected <= {N_ITEMS} (items)"
    ]


def test_factors_that_do_not_fit_the_matrix_are_a_one_line_error(tmp_path: Path, fitted) -> None:
    repo = write_project(tmp_path, fitted)
    _, _, user_factors, item_factors = fitted
    AlsModel.from_factors(user_factors[:-1], item_factors, threads=1).save(
        repo / "models" / "als.npz"
    )
    proc = run_evaluate(repo)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "models/als.npz" in lines[0] and "re-run dvc repro" in lines[0]


def test_a_user_sample_is_seeded_and_scored_with_full_rankings(fitted) -> None:
    """`evaluate.max_users`: a seeded subset of the held-out users, reported in metrics.json;
    each sampled user's AP is the one the full evaluation gives that user."""
    from recsys.evaluation import EvaluateParams, evaluate_model, evaluated_users
    from recsys.fallback import build_fallback

    train, test, users, items = fitted
    model = AlsModel.from_factors(users, items, threads=1)
    everyone = evaluated_users(test)
    sample = evaluated_users(test, 50, seed=3)
    assert sample.size == 50 and np.all(np.diff(sample) > 0) and np.isin(sample, everyone).all()
    np.testing.assert_array_equal(sample, evaluated_users(test, 50, seed=3))
    assert not np.array_equal(sample, evaluated_users(test, 50, seed=4))
    np.testing.assert_array_equal(evaluated_users(test, everyone.size, seed=3), everyone)

    fallback = build_fallback(train, None, 10)
    full = evaluate_model(model, train, test, EvaluateParams(k=10), fallback)
    part = evaluate_model(model, train, test, EvaluateParams(k=10, max_users=50, sample_seed=3),
                          fallback)  # fmt: skip
    assert "sample" not in full[0]
    assert part[0]["sample"] == {"users": 50, "of_users": everyone.size, "seed": 3}
    assert part[0]["users"] == 50
    ap = dict(zip(full[2]["user"].tolist(), full[2]["ap"].tolist(), strict=True))
    np.testing.assert_allclose(part[2]["ap"], [ap[u] for u in part[2]["user"].tolist()])
