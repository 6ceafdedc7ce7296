"""The files each stage reads and writes, relative to the repository root.

They are a public contract (dvc.yaml, users' scripts and services rely on them), so they
are named once, here.
"""

from pathlib import Path

PARAMS_FILE = Path("params.yaml")
EVENTS_DIR = Path("events")  # where `generate.source: files` logs live (a dependency of generate)
INTERACTIONS = Path("data/interactions.csv")
ITEMS = Path("data/items.csv")
USERS = Path("data/users.csv")
CONFIDENCE = Path("data/confidence.parquet")
MATRIX = Path("data/matrix.npz")
LAST_SEEN = Path("data/last_seen.npz")
USER_IDS = Path("data/user_ids.csv")
ITEM_IDS = Path("data/item_ids.csv")
TRAIN = Path("data/train.npz")
TEST = Path("data/test.npz")
SPLIT_JSON = Path("metrics/split.json")  # what the mask holds out and what it leaves out
MODEL = Path("models/als.npz")  # the default family's model (model_file("als"))
PER_USER = Path("data/per_user.npz")  # evaluate's per-user AP and NDCG (DVC-tracked)
TRAIN_LOSS = Path("metrics/train_loss.csv")
TRAIN_PROGRESS = Path("metrics/train.json")
METRICS_JSON = Path("metrics/metrics.json")
RANKING_AT_K = Path("metrics/ranking_at_k.csv")
BUNDLE = Path("models/bundle")


def model_file(family: str) -> Path:
    """The train stage's output for `model.type` = family: `models/<family>.npz`."""
    return Path(f"models/{family}.npz")
