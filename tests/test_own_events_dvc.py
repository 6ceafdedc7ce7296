"""End-to-end: a Personalize-format export with foreign event names through all seven stages."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from tests.helpers import SMALL_PARAMS, make_repo_copy, run

pytestmark = pytest.mark.dvc

STAGES = ["generate", "confidence", "matrix", "mask", "train", "evaluate", "export"]


def write_export(path: Path, rows: int = 6000, seed: int = 3) -> None:
    """A shop's export: lower-case headers in another order, ms timestamps, click/cart/purchase."""
    rng = np.random.default_rng(seed)
    users = rng.integers(1, 400, rows)
    # each user sticks to one of 5 item groups, so there is something to learn
    items = (users % 5) * 30 + rng.integers(0, 30, rows)
    kinds = rng.choice(["click", "cart", "purchase"], rows, p=[0.85, 0.1, 0.05])
    ts = 1_700_000_000_000 + np.sort(rng.integers(0, 30 * 86_400_000, rows))
    lines = ["event_type,timestamp,user_id,item_id,event_value"]
    columns = (kinds.tolist(), ts.tolist(), users.tolist(), items.tolist())
    lines += [f"{k},{t},u{u},sku-{i},1.0" for k, t, u, i in zip(*columns, strict=True)]
    with gzip.open(path, "wt", encoding="utf-8", newline="") as fh:
        fh.write("\r\n".join(lines) + "\r\n")


@pytest.fixture(scope="module")
def own_events_repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    params = {
        **SMALL_PARAMS,
        "generate": {"source": "files", "interactions_file": "events/shop.csv.gz"},
        "confidence": {"weights": {"click": 1, "cart": 3, "purchase": 5}},
        "mask": {"strategy": "time", "fraction": 0.2, "min_history": 2},
    }
    repo = tmp_path_factory.mktemp("own-events") / "repo"
    repo.mkdir()
    (repo / "events").mkdir()
    write_export(repo / "events" / "shop.csv.gz")
    make_repo_copy(repo, params)
    proc = run(["dvc", "repro"], repo)
    return repo, proc.stdout


def test_export_runs_through_all_seven_stages(own_events_repo: tuple[Path, str]) -> None:
    repo, output = own_events_repo
    assert all(f"Running stage '{s}'" in output for s in STAGES)
    header = (repo / "data/interactions.csv").read_text().splitlines()[0]
    assert header == "ITEM_ID,USER_ID,EVENT_TYPE,TIMESTAMP,DISCOUNT"
    assert "milli" in output.lower()  # the unit conversion is said, not silent
    metrics = json.loads((repo / "metrics/metrics.json").read_text())
    assert metrics["users"] > 0 and metrics["map_at_k"] > metrics["baseline"]["map_at_k"]


def test_time_split_holds_out_each_users_latest_pairs(own_events_repo: tuple[Path, str]) -> None:
    repo, _ = own_events_repo
    train = sp.load_npz(repo / "data/train.npz").tocsr()
    test = sp.load_npz(repo / "data/test.npz").tocsr()
    seen = sp.load_npz(repo / "data/last_seen.npz").tocsr()
    for user in np.flatnonzero(np.diff(test.indptr))[:50]:
        held = seen[user, test[user].indices].toarray().ravel()
        kept = seen[user, train[user].indices].toarray().ravel()
        assert held.min() >= kept.max()


def test_editing_the_export_reruns_the_pipeline(own_events_repo: tuple[Path, str]) -> None:
    repo, _ = own_events_repo
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "imported"], repo)
    assert "up to date" in run(["dvc", "status"], repo).stdout
    write_export(repo / "events" / "shop.csv.gz", seed=4)
    status = run(["dvc", "status"], repo).stdout
    assert "generate" in status and "modified" in status


def test_event_type_without_weight_is_one_line(own_events_repo: tuple[Path, str]) -> None:
    repo, _ = own_events_repo
    params = (repo / "params.yaml").read_text()
    (repo / "params.yaml").write_text(params.replace("    cart: 3\n", ""))
    try:
        proc = run(["dvc", "repro"], repo, check=False)
    finally:
        (repo / "params.yaml").write_text(params)
    assert proc.returncode != 0
    assert "error: data/interactions.csv: event type 'cart' has no weight" in proc.stderr
    assert "Traceback" not in proc.stderr
