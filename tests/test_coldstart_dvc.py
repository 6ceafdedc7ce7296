"""`dvc exp run -S coldstart.strategy=...` switches what newcomers get, through the real CLI
on the small reproduced copy: only evaluate and export re-run, and each strategy's metrics
and bundle are reproduced byte for byte by running the stages again."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from recsys.bundle import load_bundle
from recsys.io import md5sum
from tests.helpers import copy_reproduced, run, run_module

pytestmark = pytest.mark.dvc

STRATEGIES = ("popular", "apportioned", "attributes")  # the template's default last


def outputs(repo: Path) -> dict[str, str]:
    files = [repo / "metrics/metrics.json", *sorted((repo / "models/bundle").iterdir())]
    return {str(f.relative_to(repo)): md5sum(f) for f in files}


@pytest.fixture(scope="module")
def switched(
    reproduced_template: tuple[Path, str], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, dict[str, dict]]:
    repo = copy_reproduced(reproduced_template[0], tmp_path_factory.mktemp("cold") / "repo")
    runs: dict[str, dict] = {}
    for name in STRATEGIES:
        proc = run(["dvc", "exp", "run", "-S", f"coldstart.strategy={name}"], repo)
        first = outputs(repo)
        bundle = load_bundle(repo / "models/bundle")
        # the same stages again, as DVC runs them (cheaper than a forced `dvc repro`)
        again = [run_module(f"stages.{stage}", cwd=repo) for stage in ("evaluate", "export")]
        assert all(p.returncode == 0 for p in again), [p.stderr for p in again]
        runs[name] = {
            "output": proc.stdout,
            "again": again[1].stdout,
            "first": first,
            "second": outputs(repo),
            "metrics": json.loads((repo / "metrics/metrics.json").read_text()),
            "bundle": bundle,
        }
    return repo, runs


def test_each_strategy_reruns_evaluate_and_export_only_and_reproduces(switched) -> None:
    _, runs = switched
    for name, result in runs.items():
        if name != "attributes":  # the template's own params: restored from the run-cache
            assert "Running stage 'evaluate'" in result["output"], name
            assert "Running stage 'export'" in result["output"], name
        assert "Running stage 'train'" not in result["output"], name
        assert "export: models/bundle/" in result["again"], name
        assert result["first"] == result["second"], name
    bundles = {result["first"]["models/bundle/coldstart.npz"] for result in runs.values()}
    assert len(bundles) == 3


def test_the_served_path_follows_the_param(switched) -> None:
    _, runs = switched
    served = {name: r["metrics"]["served"]["map_at_k"] for name, r in runs.items()}
    scored = {name: r["metrics"]["cold_start"] for name, r in runs.items()}
    for name, cold in scored.items():
        assert cold["served"] == name
        assert cold["users"] == runs[name]["metrics"]["served"]["fallback_users"] > 0
        # every strategy is scored in every run, on the same users
        for other in STRATEGIES:
            assert cold[other] == scored["attributes"][other]
    # the synthetic shop's personas decide what users buy: conditioning on them wins
    assert served["attributes"] > served["popular"] > served["apportioned"]
    for segment in ("web", "store"):
        part = scored["attributes"]["segments"][segment]
        assert part["served_vs_popular"]["map_at_k_ci_low"] >= 0, segment
        assert part["attributes"]["map_at_k"] >= part["popular"]["map_at_k"], segment
    # web newcomers: most-popular is the store's few items, the persona's list is theirs
    assert scored["attributes"]["segments"]["web"]["served_vs_popular"]["map_at_k_ci_low"] > 0


def test_the_bundle_answers_newcomers_from_the_chosen_strategy(switched) -> None:
    repo, runs = switched
    users = (repo / "data/users.csv").read_text().splitlines()
    header = users[0].split(",")
    web = dict(zip(header, users[1].split(","), strict=True))
    assert web["SEGMENT"] == "web"  # web groups are large enough for every level
    attrs = {c: web[c] for c in ("SEGMENT", "PERSONA", "GENDER")}
    for name, result in runs.items():
        bundle = result["bundle"]
        assert bundle.coldstart is not None and bundle.coldstart.strategy == name
        recs = bundle.recommend("no-such-user", 5, attrs)
        assert recs.is_fallback and not recs.known
        if name == "attributes":
            assert recs.group == attrs
            assert list(recs) != bundle.fallback[:5].tolist()
        else:
            assert recs.group == {} and list(recs) == bundle.fallback[:5].tolist()
