"""The verdicts (graft_edge.verdicts) on hand-made numbers, against scipy's own intervals, and over simulated
null experiments: 3 seeds must not call a zero difference better or worse more than ~5% of the time."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from graft_edge.verdicts import (
    EQUIVALENT,
    INCONCLUSIVE,
    PAIRED,
    SINGLE,
    WELCH,
    WORSE,
    compare,
    noise_aware_front,
    paired,
    welch,
)


def test_a_known_paired_difference_is_detected() -> None:
    c = paired([-0.05, -0.04, -0.06])  # mean -5 points, sd 1 point, 3 seeds
    half = 4.302653 * 0.01 / math.sqrt(3)  # t(0.975, 2)
    assert (c.method, c.n, c.verdict) == (PAIRED, 3, WORSE)
    assert c.diff == pytest.approx(-0.05) and (c.low, c.high) == pytest.approx((-0.05 - half, -0.05 + half), abs=1e-6)
    assert c.words() == "worse than dense: -5.0 points, 95% interval [-7.5, -2.5] (paired t, 3 seeds)"
    assert c.cell() == "worse -5.0 [-7.5, -2.5]" and c.seeds_needed is None


def test_zero_difference_equivalent_at_a_generous_margin_inconclusive_at_a_tight_one() -> None:
    diffs = [0.002, -0.002, 0.0]  # half-width 4.30 x 0.2 / sqrt(3) = 0.50 points
    generous, tight = paired(diffs, margin=0.01), paired(diffs, margin=0.003)
    assert generous.verdict == EQUIVALENT and generous.label() == "equivalent (±1.0)"
    assert tight.verdict == INCONCLUSIVE
    # at sd 0.2 points the half-width falls under the 0.3-point margin with 5 seeds (t(4) x 0.2 / sqrt(5) = 0.25;
    # 4 seeds give t(3) x 0.2 / 2 = 0.32)
    assert tight.seeds_needed == 5 and "about 5 seeds would decide" in tight.words()


def test_equivalence_is_read_before_significance() -> None:
    """A difference inside the margin is equivalent even when its interval excludes 0 (the user said it does not
    matter); outside the margin the same interval is a plain 'worse'."""
    diffs = [-0.003, -0.0031, -0.0029]
    assert paired(diffs, margin=0.01).verdict == EQUIVALENT
    assert paired(diffs, margin=0.0).verdict == WORSE


@pytest.mark.parametrize("values", [[0.01], [0.0]])
def test_one_seed_is_inconclusive_never_within_noise(values: list[float]) -> None:
    c = paired(values)
    assert (c.verdict, c.method, c.low, c.high) == (INCONCLUSIVE, SINGLE, None, None)
    assert "one seed, no spread known: run more seeds" in c.words()
    assert compare({0: 0.80}, {0: 0.80}).verdict == INCONCLUSIVE  # two single models: no spread on either side


@pytest.mark.parametrize("a, b", [([0.80, 0.82, 0.84], [0.70, 0.71, 0.72]), ([0.5, 0.61, 0.55, 0.58], [0.56, 0.52]),
                                  ([0.1, 0.12, 0.11], [0.2, 0.25, 0.3])])
def test_welch_and_paired_intervals_match_scipy(a: list[float], b: list[float]) -> None:
    w = welch(a, b)
    ci = stats.ttest_ind(a, b, equal_var=False).confidence_interval()
    assert w.method == WELCH and (w.low, w.high) == pytest.approx((ci.low, ci.high), rel=1e-9, abs=1e-12)
    if len(a) == len(b):
        p = paired(np.subtract(a, b))
        ci = stats.ttest_rel(a, b).confidence_interval()
        assert (p.low, p.high) == pytest.approx((ci.low, ci.high), rel=1e-9, abs=1e-12)


def test_compare_pairs_by_seed_against_a_fixed_reference_or_welch() -> None:
    dense = {0: 0.80}
    variant = {0: 0.78, 1: 0.79, 2: 0.77}
    c = compare(variant, dense)  # one dense model: every seed's difference from it
    assert (c.method, c.n, c.n_ref) == (PAIRED, 3, 1) and c.diff == pytest.approx(-0.02)
    assert compare(dense, variant).diff == pytest.approx(0.02) and compare(dense, variant).n == 1
    same = compare({0: 0.5, 1: 0.6, 2: 0.7}, {0: 0.49, 1: 0.59, 2: 0.69})  # the seed effect cancels in pairs
    assert same.method == PAIRED and same.high - same.low == pytest.approx(0.0, abs=1e-12)
    other = compare({0: 0.5, 1: 0.6, 2: 0.7}, {3: 0.49, 4: 0.59, 5: 0.69})  # other seeds: independent samples
    assert other.method == WELCH and other.verdict == INCONCLUSIVE and other.low < -0.1
    assert compare({}, dense) is None


def test_false_better_or_worse_rate_over_simulated_null_experiments() -> None:
    """2,000 experiments of 3 seeds whose true difference is 0: the interval calls better/worse in ~5% of them;
    the rule the reports used before (|mean diff| > sd of the diffs, i.e. |t| > sqrt(3)) in ~22%."""
    rng = np.random.default_rng(2024)
    diffs = rng.normal(0.0, 0.02, size=(2000, 3))
    false_new = np.mean([paired(d, margin=0.0).verdict not in (INCONCLUSIVE, EQUIVALENT) for d in diffs])
    false_old = np.mean(np.abs(diffs.mean(1)) > diffs.std(1, ddof=1))
    assert false_new <= 0.06 and 0.18 <= false_old <= 0.28
    welch_false = np.mean([welch(d, rng.normal(0.0, 0.02, 3), margin=0.0).verdict not in (INCONCLUSIVE, EQUIVALENT)
                           for d in diffs])
    assert welch_false <= 0.06  # Welch is conservative at n = 3


def test_noise_aware_front_gives_ties_to_the_faster_point() -> None:
    # latency, val mAP per seed: B is faster than A and equivalent; C is faster still but clearly worse than both
    lat = [1.0, 0.5, 0.2, None]
    seeds = [{0: 0.80, 1: 0.81, 2: 0.80}, {0: 0.80, 1: 0.80, 2: 0.81}, {0: 0.60, 1: 0.61, 2: 0.60}, {0: 0.9}]

    def not_worse(j: int, i: int) -> bool:
        return compare(seeds[j], seeds[i]).verdict != WORSE

    assert noise_aware_front(lat, not_worse) == [False, True, True, False]
    single = [{0: 0.80}, {0: 0.70}, {0: 0.60}]  # one seed each: inconclusive, so only the fastest survives
    assert noise_aware_front([3.0, 2.0, 1.0], lambda j, i: compare(single[j], single[i]).verdict != WORSE) == \
        [False, False, True]
