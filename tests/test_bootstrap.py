"""Bootstrap error bars: deterministic from the seed, honest coverage, paired differences."""

from __future__ import annotations

import numpy as np
import pytest

from recsys.bootstrap import interval, paired_difference, replicate_means, verdict
from recsys.errors import StageError
from recsys.evaluation import EvaluateParams
from tests.helpers import parse


def test_same_seed_same_interval_other_seed_other_interval() -> None:
    values = np.random.default_rng(0).random((500, 2))
    a = interval(values, 400, seed=5)
    b = interval(values, 400, seed=5)
    c = interval(values, 400, seed=6)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    assert (a[0] < values.mean(axis=0)).all() and (values.mean(axis=0) < a[1]).all()


def test_replicates_are_multinomial_resamples() -> None:
    """Each replicate's mean lies within the values' range, and their spread matches the
    standard error sd / sqrt(n)."""
    values = np.random.default_rng(1).exponential(size=2000)
    means = replicate_means(values, 3000, seed=0)
    assert means.shape == (3000,)
    assert means.mean() == pytest.approx(values.mean(), rel=0.01)
    assert means.std() == pytest.approx(values.std() / np.sqrt(values.size), rel=0.1)


def test_the_95_interval_covers_the_true_mean_about_95_percent_of_the_time() -> None:
    rng = np.random.default_rng(2)
    true_mean, trials = 0.3, 300
    covered = 0
    for trial in range(trials):  # 300 small bootstraps: a coverage check, not users
        sample = (rng.random(400) < true_mean).astype(np.float64)
        low, high = interval(sample, 500, seed=trial)
        covered += int(low <= true_mean <= high)
    assert 0.90 <= covered / trials <= 0.99, covered / trials


def test_paired_difference_sees_a_small_consistent_gain() -> None:
    """Users differ a lot, the two models little: only the paired interval excludes 0."""
    rng = np.random.default_rng(3)
    difficulty = rng.random(3000)
    old = difficulty
    new = difficulty + 0.004 + rng.normal(0, 0.01, 3000)
    mean, low, high = paired_difference(new, old, 1000, seed=0)
    assert mean == pytest.approx(0.004, abs=0.001)
    assert verdict(low, high) == "significant"
    new_low, new_high = interval(new, 1000, seed=0)
    old_low, old_high = interval(old, 1000, seed=0)
    assert new_low < old_high  # the separate intervals overlap: they cannot tell
    same = paired_difference(old + rng.normal(0, 0.01, 3000), old, 1000, seed=0)
    assert verdict(same[1], same[2]) == "within noise"


def test_bootstrap_params_are_validated_in_one_line() -> None:
    with pytest.raises(StageError, match="evaluate.bootstrap_samples = 5; expected an integer in"):
        parse(EvaluateParams.from_section, "evaluate", {"k": 10, "bootstrap_samples": 5})
    defaults = parse(EvaluateParams.from_section, "evaluate", {"k": 10})
    assert (defaults.bootstrap_samples, defaults.bootstrap_seed) == (1000, 0)
