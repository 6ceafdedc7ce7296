"""A shop's daily event exports for the retraining-loop tests: one gzip CSV per day, users
loyal to an item group (so there is something to learn), timestamps inside that day."""

from __future__ import annotations

import datetime as dt
import gzip

import numpy as np

FIRST_DAY = dt.date(2024, 6, 1)
WEIGHTS = {"View": 1, "AddToCart": 3, "Purchase": 5}


def day_name(day: int) -> str:
    """`2024-06-01.csv.gz` for day 1: names sort in time order."""
    return f"{FIRST_DAY + dt.timedelta(days=day - 1)}.csv.gz"


def day_bytes(day: int, rows: int = 2500, users: int = 250, seed: int = 0) -> bytes:
    """Day `day`'s export, deterministic (gzip mtime 0) for the same arguments."""
    rng = np.random.default_rng([seed, day])
    user = rng.integers(0, users, rows)
    item = (user % 6) * 20 + rng.integers(0, 20, rows)
    kind = rng.choice(list(WEIGHTS), rows, p=[0.8, 0.15, 0.05])
    start = int(dt.datetime.combine(FIRST_DAY, dt.time(), dt.UTC).timestamp()) + (day - 1) * 86_400
    ts = start + np.sort(rng.integers(0, 86_400, rows))
    lines = ["USER_ID,ITEM_ID,EVENT_TYPE,TIMESTAMP"]
    lines += [
        f"u{u},sku-{i},{k},{t}"
        for u, i, k, t in zip(user.tolist(), item.tolist(), kind.tolist(), ts.tolist(), strict=True)
    ]
    return gzip.compress(("\n".join(lines) + "\n").encode(), mtime=0)
