"""Stage `confidence`: the event log -> one confidence value per (user, item) pair."""

from recsys.cli import run_stage
from recsys.confidence import ConfidenceParams, aggregate, load_events, write_pairs
from recsys.params import load


def main() -> None:
    params = load(ConfidenceParams.from_section, "confidence")
    events = load_events()
    pairs = aggregate(events, params.weights, params.aggregation, params.log_epsilon)
    write_pairs(pairs)
    print(f"confidence: {events.num_rows:,} events -> {len(pairs):,} (user, item) pairs")


if __name__ == "__main__":
    run_stage(main)
