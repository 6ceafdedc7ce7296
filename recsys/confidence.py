"""Confidence: one value per (user, item) pair from a log of typed events.

Implicit feedback has no ratings, so each event type gets a weight (params
`confidence.weights`) and the weights of a pair's events are aggregated: `sum` is the
article's choice; `log` (log1p(sum / epsilon), Hu, Koren & Volinsky 2008) damps heavy
repeat viewers so one obsessive user cannot dominate an item's factors. The last timestamp
of each pair is kept for the time-based split.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from recsys.errors import StageError
from recsys.ids import check_id_length
from recsys.io import atomic_path
from recsys.params import Section
from recsys.paths import CONFIDENCE, INTERACTIONS

AGGREGATIONS = ["sum", "log"]
# A weight is a relative importance. Beyond a 1e6 ratio float32 confidences (24-bit
# mantissa) lose the small weights entirely, and near 3.4e38 they overflow to inf.
MIN_WEIGHT, MAX_WEIGHT = 1e-6, 1e6
COLUMNS = ["USER_ID", "ITEM_ID", "EVENT_TYPE", "TIMESTAMP"]


@dataclass(frozen=True)
class ConfidenceParams:
    """`confidence:` params: a weight per event type and how a pair's weights combine."""

    weights: dict[str, float]
    aggregation: str
    log_epsilon: float

    @classmethod
    def from_section(cls, s: Section) -> ConfidenceParams:
        weights = s.mapping("weights")
        for event, weight in weights.items():
            if not isinstance(event, str) or not event:
                raise StageError(
                    f"params.yaml: confidence.weights has key {event!r}; expected a name"
                )
            if (
                isinstance(weight, bool)
                or not isinstance(weight, (int, float))
                or not MIN_WEIGHT <= weight <= MAX_WEIGHT
            ):
                raise StageError(
                    f"params.yaml: confidence.weights.{event} = {weight!r}; expected a "
                    f"number in [{MIN_WEIGHT:g}, {MAX_WEIGHT:g}] (a relative importance)"
                )
        return cls(
            weights={str(k): float(v) for k, v in weights.items()},
            aggregation=s.choice("aggregation", AGGREGATIONS, "sum"),
            log_epsilon=s.float("log_epsilon", 1.0, min=0, min_exclusive=True),
        )


def load_events(path: Path | str = INTERACTIONS) -> pd.DataFrame:
    """Read only the columns confidence needs; ids as categoricals to stay lean at 10x scale.

    Ids are read as text, never as numbers: "007" and "7" are two users.
    """
    import pyarrow.csv as pacsv

    text = pa.dictionary(pa.int32(), pa.string())
    types = {"USER_ID": text, "ITEM_ID": text, "EVENT_TYPE": text, "TIMESTAMP": pa.int64()}
    try:
        table = pacsv.read_csv(
            path,
            convert_options=pacsv.ConvertOptions(
                include_columns=COLUMNS,
                column_types=types,
                strings_can_be_null=False,  # ids such as "NA" or "null" are ids
            ),
        )
        events = table.unify_dictionaries().combine_chunks().to_pandas()
    except FileNotFoundError:
        raise StageError(f"{path}: not found; run the generate stage first (dvc repro)") from None
    except (ValueError, KeyError, OSError, UnicodeDecodeError, pa.ArrowException) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "conversion error to int64" in reason:
            raise StageError(
                f"{path}: column TIMESTAMP must hold whole epoch seconds ({reason})"
            ) from None
        raise StageError(
            f"{path}: not a readable event log with columns {', '.join(COLUMNS)} ({reason})"
        ) from None
    for column in ("USER_ID", "ITEM_ID", "EVENT_TYPE"):  # sorted ids: a stable pair order
        categories = events[column].cat.categories.to_numpy(dtype=object)
        events[column] = events[column].cat.set_categories(np.sort(categories))
    if events.empty:
        raise StageError(f"{path}: no events (header only); expected at least one row")
    if not pd.api.types.is_integer_dtype(events["TIMESTAMP"]):
        raise StageError(f"{path}: column TIMESTAMP must hold whole epoch seconds")
    for column in ("USER_ID", "ITEM_ID", "EVENT_TYPE"):
        if "" in events[column].cat.categories:
            row = int(np.flatnonzero(events[column].to_numpy() == "")[0]) + 2
            raise StageError(f"{path}: line {row}: blank {column}; expected an id")
    for column in ("USER_ID", "ITEM_ID"):  # the file can be edited by hand
        ids = events[column].cat
        check_id_length(path, column, ids.categories, ids.codes.to_numpy())
    return events


def event_weights(event_types: pd.Series, weights: dict[str, float]) -> np.ndarray:
    """Weight per event; an event type without a weight is an error that names it."""
    codes = event_types.cat.categories
    missing = [str(c) for c in codes if c not in weights]
    if missing:
        raise StageError(
            f"{INTERACTIONS}: event type {missing[0]!r} has no weight; add it to "
            f"confidence.weights in params.yaml (known: {', '.join(weights)})"
        )
    table = np.array([weights[c] for c in codes], dtype=np.float64)
    return table[event_types.cat.codes.to_numpy()]


def aggregate(
    events: pd.DataFrame, weights: dict[str, float], aggregation: str, log_epsilon: float
) -> pd.DataFrame:
    """One row per (user, item) pair: CONFIDENCE (float32) and LAST_TIMESTAMP (int64)."""
    frame = pd.DataFrame(
        {
            "USER_ID": events["USER_ID"],
            "ITEM_ID": events["ITEM_ID"],
            "w": event_weights(events["EVENT_TYPE"], weights),
            "ts": events["TIMESTAMP"].to_numpy(np.int64),
        }
    )
    pairs = frame.groupby(["USER_ID", "ITEM_ID"], observed=True, sort=True).agg(
        CONFIDENCE=("w", "sum"), LAST_TIMESTAMP=("ts", "max")
    )
    confidence = pairs["CONFIDENCE"].to_numpy()
    with np.errstate(over="ignore"):  # refused below, naming a pair
        if aggregation == "log":
            confidence = np.log1p(confidence / log_epsilon)
        confidence = confidence.astype(np.float32)
    out = pairs.reset_index()
    bad = ~np.isfinite(confidence)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise StageError(
            f"{INTERACTIONS}: the pair USER_ID {str(out['USER_ID'].iloc[row])!r}, ITEM_ID "
            f"{str(out['ITEM_ID'].iloc[row])!r} aggregates to a confidence of {confidence[row]} "
            f"({bad.sum():,} pairs do); expected a finite float32: lower confidence.weights "
            "or raise confidence.log_epsilon in params.yaml"
        )
    return pd.DataFrame(
        {
            "USER_ID": out["USER_ID"].astype(str).to_numpy(),
            "ITEM_ID": out["ITEM_ID"].astype(str).to_numpy(),
            "CONFIDENCE": confidence,
            "LAST_TIMESTAMP": out["LAST_TIMESTAMP"].to_numpy(np.int64),
        }
    )


def write_pairs(pairs: pd.DataFrame, path: Path | str = CONFIDENCE) -> None:
    with atomic_path(path) as tmp:
        pairs.to_parquet(tmp, index=False, engine="pyarrow", compression="zstd")
