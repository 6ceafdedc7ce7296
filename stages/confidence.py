"""Stage `confidence`: the event log -> one confidence value per (user, item) pair.

`engine.name` picks who aggregates (DuckDB by default, Spark SQL, or the earlier pyarrow
code); all of them write the same bytes (recsys.aggregation).
"""

from recsys.aggregation import EngineParams, aggregate_duckdb
from recsys.cli import run_stage
from recsys.confidence import ConfidenceParams, aggregate, load_events, write_pairs
from recsys.params import load
from recsys.paths import INTERACTIONS
from recsys.threads import stage_threads


def main() -> None:
    params = load(ConfidenceParams.from_section, "confidence")
    engine = load(EngineParams.from_section, "engine", optional=True)
    if engine.name == "spark":
        from recsys.spark import aggregate_spark

        pairs, events = aggregate_spark(params, engine)
    elif engine.name == "duckdb":
        args = (params.weights, params.aggregation, params.log_epsilon, stage_threads())
        pairs, events = aggregate_duckdb(INTERACTIONS, *args)
    else:
        table = load_events()
        events = table.num_rows
        pairs = aggregate(table, params.weights, params.aggregation, params.log_epsilon)
        del table
    write_pairs(pairs)
    print(f"confidence ({engine.name}): {events:,} events -> {len(pairs):,} (user, item) pairs")


if __name__ == "__main__":
    run_stage(main)
