"""Statistics over seeds: the t distribution against scipy, intervals with known answers, honest verdicts."""

from __future__ import annotations

import math
import random

import pytest
from scipy import stats as sps

from tdfusion_core.apps.stats import mean_ci, paired_comparison, t_cdf, t_quantile, verdict


@pytest.mark.parametrize("df", [1, 2, 3, 4, 7, 19, 100])
def test_t_distribution_matches_scipy(df):
    for t in (-8.0, -2.1, -0.3, 0.0, 0.7, 1.96, 4.5, 30.0):
        assert t_cdf(t, df) == pytest.approx(sps.t.cdf(t, df), abs=1e-12)
    for p in (0.005, 0.025, 0.1, 0.5, 0.9, 0.975, 0.995):
        assert t_quantile(p, df) == pytest.approx(sps.t.ppf(p, df), rel=1e-9, abs=1e-12)


def test_mean_ci_is_the_textbook_interval():
    xs = [0.41, 0.45, 0.38, 0.44, 0.40]
    s = mean_ci(xs)
    ref = sps.t.interval(0.95, len(xs) - 1, loc=sum(xs) / 5, scale=sps.sem(xs))
    assert (s.low, s.high) == pytest.approx(ref, abs=1e-12)
    assert math.isnan(mean_ci([0.5]).half_width) and mean_ci([0.5]).mean == 0.5
    assert mean_ci([float("nan"), 1.0, 3.0]).n == 2


def test_the_95_percent_interval_covers_the_truth_95_percent_of_the_time():
    rng = random.Random(1)
    hits = 0
    trials = 4000
    for _ in range(trials):
        s = mean_ci([rng.gauss(2.0, 0.3) for _ in range(4)])
        hits += s.low <= 2.0 <= s.high
    assert 0.94 <= hits / trials <= 0.96


def test_a_method_better_by_construction_is_reported_ahead_with_the_expected_interval():
    rng = random.Random(0)
    base = [rng.uniform(0.3, 0.6) for _ in range(5)]  # large spread between seeds, shared by both methods
    noise = [rng.gauss(0.0, 0.01) for _ in range(5)]
    better = [b + 0.05 + e for b, e in zip(base, noise)]
    c = paired_comparison(better, base)
    d = [x - y for x, y in zip(better, base)]
    ref = sps.ttest_rel(better, base)
    assert c.p_value == pytest.approx(ref.pvalue, rel=1e-8)
    assert c.low == pytest.approx(sps.t.interval(0.95, 4, loc=sum(d) / 5, scale=sps.sem(d))[0], abs=1e-12)
    assert c.low < 0.05 < c.high and c.high - c.low < 0.05  # contains the true gain, far narrower than the gain
    assert c.boot_low > 0 and verdict(c.low, c.high) == "ahead" and verdict(-c.high, -c.low) == "behind"
    # unpaired, the seed spread would hide the same gain: pairing is what makes the difference visible
    assert mean_ci(better).low < mean_ci(base).high


def test_identical_methods_are_not_distinguishable():
    xs = [0.41, 0.45, 0.38, 0.44, 0.40]
    c = paired_comparison(xs, list(xs))
    assert c.mean == 0 and c.p_value == 1.0 and verdict(c.low, c.high) == "not distinguishable"
    rng = random.Random(3)
    same = 0
    for trial in range(200):  # two methods with the same distribution: "ahead"/"behind" only ~5 % of the time
        a = [rng.gauss(0.5, 0.05) for _ in range(5)]
        b = [rng.gauss(0.5, 0.05) for _ in range(5)]
        c = paired_comparison(a, b, n_boot=200, seed=trial)
        same += verdict(c.low, c.high) == "not distinguishable"
    assert same >= 0.9 * 200


def test_paired_comparison_edge_cases():
    one = paired_comparison([0.5], [0.4])
    assert (
        one.mean == pytest.approx(0.1) and math.isnan(one.low) and verdict(one.low, one.high) == "not distinguishable"
    )
    const = paired_comparison([0.5, 0.6], [0.4, 0.5])
    assert const.low == pytest.approx(0.1) and const.p_value == 0.0
    with pytest.raises(ValueError, match="same length"):
        paired_comparison([1.0], [1.0, 2.0])
