"""Evidence (canary.core.evidence): Wilson bounds and the requests a verdict needs; the judge
(canary.core.judge): Kayenta's Mann–Whitney classifier on its worked examples, and the score."""

from __future__ import annotations

import math
from statistics import NormalDist

import pytest
from scipy.stats import mannwhitneyu

from canary.core import evidence, judge
from canary.core.judge import Classification, ScoredMetric

# --- Wilson bounds --------------------------------------------------------------------------------


@pytest.mark.parametrize(("successes", "trials"), [(0, 10), (1, 10), (5, 10), (10, 10), (3, 1000), (997, 1000), (2.5, 7.3)])
@pytest.mark.parametrize("confidence", [0.5, 0.9, 0.95, 0.99])
def test_the_bounds_hold_the_observed_share(successes: float, trials: float, confidence: float) -> None:
    bounds = evidence.wilson(successes, trials, confidence)
    share = successes / trials
    assert 0.0 <= bounds.low <= share <= bounds.high <= 1.0


@pytest.mark.parametrize("share", [0.0, 0.01, 0.2, 0.5, 0.9, 1.0])
def test_the_bounds_close_in_as_the_requests_grow(share: float) -> None:
    sizes = [5, 10, 50, 100, 1000, 10000, 100000]
    bounds = [evidence.wilson(share * n, n, 0.95) for n in sizes]
    widths = [b.high - b.low for b in bounds]
    assert all(a > b for a, b in zip(widths, widths[1:], strict=False))
    highs, lows = [b.high for b in bounds], [b.low for b in bounds]
    if share == 0.0:
        assert all(a > b for a, b in zip(highs, highs[1:], strict=False)) and lows == pytest.approx([0.0] * len(sizes), abs=1e-12)
    if share == 1.0:
        assert all(a < b for a, b in zip(lows, lows[1:], strict=False)) and highs == pytest.approx([1.0] * len(sizes), abs=1e-12)
    assert bounds[-1].high - bounds[-1].low < 0.01


def test_higher_confidence_widens_the_bounds() -> None:
    widths = [(b.high - b.low) for b in (evidence.wilson(3, 100, c) for c in (0.5, 0.8, 0.9, 0.95, 0.99, 0.9999))]
    assert all(a < b for a, b in zip(widths, widths[1:], strict=False))


@pytest.mark.parametrize("trials", [1, 4, 100, 268, 12345])
def test_the_upper_bound_of_no_failure_is_z2_over_n_plus_z2(trials: int) -> None:
    z = NormalDist().inv_cdf(0.95)
    assert evidence.wilson(0, trials, 0.95).high == pytest.approx(z * z / (trials + z * z))


def test_the_bounds_are_symmetric_and_known() -> None:
    assert evidence.wilson(5, 10, 0.95).low == pytest.approx(0.26927, abs=1e-5)
    assert evidence.wilson(5, 10, 0.95).high == pytest.approx(0.73073, abs=1e-5)
    a, b = evidence.wilson(3, 40, 0.9), evidence.wilson(37, 40, 0.9)
    assert a.low == pytest.approx(1 - b.high) and a.high == pytest.approx(1 - b.low)


@pytest.mark.parametrize("trials", [0, -1, 0.0])
def test_no_requests_say_nothing(trials: float) -> None:
    assert evidence.wilson(0, trials, 0.95) == evidence.Bounds(0.0, 1.0)


def test_more_successes_than_trials_are_capped() -> None:
    assert evidence.wilson(12, 10, 0.95) == evidence.wilson(10, 10, 0.95)


@pytest.mark.parametrize(("limit", "confidence", "expected"), [(0.01, 0.95, 268), (0.05, 0.95, 52), (0.1, 0.95, 25), (0.01, 0.99, 536), (0.001, 0.9, 1641)])
def test_needed_is_the_least_count_without_failure_inside_the_limit(limit: float, confidence: float, expected: int) -> None:
    n = evidence.needed(limit, confidence)
    assert n == expected
    assert evidence.wilson(0, n, confidence).high <= limit < evidence.wilson(0, n - 1, confidence).high


@pytest.mark.parametrize(("limit", "expected"), [(0.0, -1), (-0.5, -1), (0.99, 1), (1.0, 1)])
def test_needed_at_the_edges(limit: float, expected: int) -> None:
    assert evidence.needed(limit, 0.95) == expected


def test_needed_grows_with_confidence_and_shrinks_with_the_limit() -> None:
    assert evidence.needed(0.01, 0.9) < evidence.needed(0.01, 0.95) < evidence.needed(0.01, 0.99)
    assert evidence.needed(0.001, 0.95) > evidence.needed(0.01, 0.95) > evidence.needed(0.1, 0.95)


# --- Kayenta's worked examples --------------------------------------------------------------------

BASE = [190, 195, 198, 200, 202, 205, 210, 188, 192, 207, 199, 201, 196, 204, 193, 206, 197, 203, 191, 209]
JITTER = [3, -2, 1, -4, 2, 0, -1, 4, -3, 2, -2, 1, 3, -1, 0, -3, 2, -4, 1, 1]


def _canary(shift: float) -> list[float]:
    return [b + shift + j for b, j in zip(BASE, JITTER, strict=True)]


def _compare(shift: float, **options: float) -> judge.Comparison:
    return judge.compare(_canary(shift), BASE, confidence=0.98, tolerance=0.25, **options)


def test_600_ms_slower_is_high_with_its_interval() -> None:
    result = _compare(600)
    assert result.classification is Classification.HIGH
    assert result.shift == pytest.approx(600, abs=0.5)
    assert result.low == pytest.approx(594, abs=0.5) and result.high == pytest.approx(605, abs=0.5)
    assert (result.canary_samples, result.stable_samples) == (20, 20)
    assert result.reason.startswith("higher than stable: shift +600 (98% interval [594, 605])")


@pytest.mark.parametrize(
    ("shift", "options", "classification"),
    [
        (0, {}, Classification.PASS),
        (-100, {}, Classification.LOW),
        (10, {}, Classification.HIGH),
        (-10, {}, Classification.LOW),
        (10, {"allowed_increase": 1.1}, Classification.PASS),  # 5 % slower is within a 10 % allowance
        (-10, {"allowed_decrease": 0.9}, Classification.PASS),
        (-100, {"allowed_decrease": 0.9}, Classification.LOW),
        (7, {}, Classification.PASS),
        (5, {}, Classification.PASS),
    ],
)
def test_kayentas_classifications(shift: float, options: dict[str, float], classification: Classification) -> None:
    result = _compare(shift, **options)
    assert result.classification is classification, result.reason
    assert result.low <= result.shift <= result.high


def test_a_small_shift_passes_although_the_p_value_is_below_the_confidence() -> None:
    """+7 ms: the rank test alone would call it significant; its interval does not clear 0.25 × the shift."""
    p_value = mannwhitneyu(_canary(7), BASE, alternative="two-sided", method="asymptotic").pvalue
    assert p_value < 0.02
    result = _compare(7)
    assert result.classification is Classification.PASS and 0 < result.low < 0.25 * result.shift
    assert result.reason.startswith("no shift beyond the noise: shift +7")


def test_the_ratio_of_means_is_reported() -> None:
    assert _compare(0).mean_ratio == pytest.approx(sum(_canary(0)) / sum(BASE))
    assert _compare(10).mean_ratio == pytest.approx(1.0502, abs=1e-4)


@pytest.mark.parametrize(
    ("stable", "canary", "classification"),
    [
        ([1, 2.2, 1.1, 2.5, 3], [20, 22, 21, 25, 30], Classification.HIGH),
        ([1, 1, 1, 1, 1], [1, 1, 1, 1, 10], Classification.PASS),
        ([20, 22, 21, 25, 30], [1, 2.2, 1.1, 2.5, 3], Classification.LOW),
        ([5, 5, 5, 5, 5], [5, 5, 5, 5, 5], Classification.PASS),
    ],
)
def test_kayentas_suite_cases(stable: list[float], canary: list[float], classification: Classification) -> None:
    result = judge.compare(canary, stable, confidence=0.95, tolerance=0.10, allowed_increase=1.2)
    assert result.classification is classification, result.reason


def test_identical_samples_pass_without_a_test() -> None:
    result = judge.compare([3, 1, 2], [1, 2, 3], confidence=0.95, tolerance=0.1)
    assert result.classification is Classification.PASS and (result.shift, result.low, result.high) == (0.0, 0.0, 0.0)
    assert result.reason == "the samples are identical"


@pytest.mark.parametrize(
    ("canary", "stable", "min_samples", "counts"),
    [([1, 2], [1, 2, 3], 3, (2, 3)), ([1, 2, 3], [], 3, (3, 0)), ([1.0, math.nan, 2.0, 3.0], [1, 2, math.nan, 3], 4, (3, 3)), (list(range(9)), list(range(20)), 10, (9, 20))],
)
def test_too_few_samples_are_no_data(canary: list[float], stable: list[float], min_samples: int, counts: tuple[int, int]) -> None:
    result = judge.compare(canary, stable, confidence=0.95, tolerance=0.1, min_samples=min_samples)
    assert result.classification is Classification.NO_DATA and (result.canary_samples, result.stable_samples) == counts
    assert math.isnan(result.shift) and math.isnan(result.low)
    assert result.reason == f"{counts[0]} canary and {counts[1]} stable samples: fewer than {min_samples} on a side"


def test_nan_samples_are_dropped_and_infinite_ones_kept() -> None:
    noisy = [*_canary(600), math.nan, math.inf]
    result = judge.compare(noisy, BASE, confidence=0.98, tolerance=0.25)
    assert result.classification is Classification.HIGH and result.canary_samples == 21


def test_a_canary_in_the_inf_bucket_is_the_slowest_not_missing() -> None:
    """histogram_quantile answers +Inf when the quantile falls in the +Inf bucket: the slowest canary
    there is. It is ranked above every finite sample, never taken for no data."""
    result = judge.compare([math.inf] * 13, BASE, confidence=0.98, tolerance=0.25, min_samples=10)
    assert result.classification is Classification.HIGH and result.canary_samples == 13 and math.isinf(result.mean_ratio)
    assert "13 canary and 0 stable samples infinite" in result.reason
    faster = judge.compare(BASE, [math.inf] * 13, confidence=0.98, tolerance=0.25, min_samples=10)
    assert faster.classification is Classification.LOW


def test_both_tracks_all_in_the_inf_bucket_are_no_data_not_identical() -> None:
    """Both beyond every bucket tie, and a tie there says nothing: the canary may be ten times slower. Before, they
    passed as "the samples are identical"."""
    result = judge.compare([math.inf] * 12, [math.inf] * 12, confidence=0.98, tolerance=0.25, min_samples=10)
    assert result.classification is Classification.NO_DATA, result.reason
    assert result.reason == "all 12 canary and 12 stable samples are +inf (beyond the histogram's buckets): nothing to tell them apart by"


def _half_beyond(count: int, spread: bool) -> list[float]:
    """BASE with ``count`` samples beyond the largest bucket: the first ones, or every other one."""
    beyond = set(range(1, 2 * count, 2)) if spread else set(range(count))
    return [math.inf if i in beyond else float(v) for i, v in enumerate(BASE)]


@pytest.mark.parametrize(
    ("count", "spread", "classification"),
    [(10, True, Classification.HIGH), (10, False, Classification.HIGH), (8, False, Classification.HIGH), (7, True, Classification.HIGH),
     (5, False, Classification.HIGH), (4, False, Classification.PASS), (2, True, Classification.PASS), (1, False, Classification.PASS)],
)
def test_a_canary_beyond_every_bucket_more_often_than_chance_is_high(count: int, spread: bool, classification: Classification) -> None:
    """Half of the canary's p99 samples at +Inf, none of stable's: the rank test alone passed it ("no shift beyond the
    noise"), because the shift can only be measured as far as the finite samples go and Kayenta's effect-size rule
    weighs the interval against that understated shift. The share beyond the buckets is the evidence (Fisher's exact
    test at the interval's level on a side: 0.01 at 98 %, Boschloo's where Fisher's is too coarse: 5 of 20 has
    p = 0.024 by Fisher's, 0.0094 by Boschloo's); a few such samples are left to the rank test."""
    result = judge.compare(_half_beyond(count, spread), BASE, confidence=0.98, tolerance=0.25)
    assert result.classification is classification, result.reason
    if classification is Classification.HIGH:
        test = "Boschloo's" if count == 5 else "Fisher's"
        assert result.reason.startswith(f"higher than stable: {count} of 20 canary and 0 of 20 stable samples are +inf (beyond the histogram's buckets): "
                                         f"more on canary than chance allows ({test} exact test p=")
        assert "; rank test: shift +" in result.reason


@pytest.mark.parametrize(("size", "beyond", "classification"), [(10, 5, Classification.HIGH), (11, 5, Classification.HIGH), (9, 4, Classification.PASS)])
def test_half_the_canary_beyond_the_buckets_is_high_from_ten_samples_a_side(size: int, beyond: int, classification: Classification) -> None:
    """5 of 10 canary p99 samples at +Inf, none of stable's, passed as "no shift beyond the noise, mean ratio inf":
    Fisher's test conditions on both margins and is coarse at ten a side (p = 0.016, not below 0.01), and the rank
    test, which ranks the infinities above every finite sample already, is not below it either (the other five are
    as fast as stable). Boschloo's unconditional test, exact at its level, is (p = 0.0063). Below ten a side half
    is within chance (4 of 9: p = 0.015), the bound the README states."""
    canary = [*BASE[: size - beyond], *[math.inf] * beyond]
    result = judge.compare(canary, _canary(0)[:size], confidence=0.98, tolerance=0.25)
    assert result.classification is classification, result.reason
    if classification is Classification.HIGH:
        assert result.reason.startswith(f"higher than stable: {beyond} of {size} canary and 0 of {size} stable samples are +inf (beyond the histogram's buckets): "
                                         "more on canary than chance allows (Boschloo's exact test p=")
        assert judge.compare(_canary(0)[:size], canary, confidence=0.98, tolerance=0.25).classification is Classification.LOW
    else:
        assert "no more on a track than chance allows (Boschloo's exact test p=0.015 ≥ 0.01)" in result.reason


def test_a_pass_with_infinite_samples_gives_the_finite_samples_mean_ratio_and_why_the_infinite_ones_did_not_fail() -> None:
    """Before: "no shift beyond the noise: … mean ratio inf …", which says both that the canary is no slower and
    infinitely slower. The mean ratio shown is the finite samples' (the verdict's effect rule still counts the
    infinite ones), and the count of infinite samples says which test found it within chance."""
    result = judge.compare(_half_beyond(2, True), BASE, confidence=0.98, tolerance=0.25)
    assert result.classification is Classification.PASS and math.isinf(result.mean_ratio)
    assert result.reason.startswith("no shift beyond the noise: shift ")
    assert "mean ratio inf" not in result.reason and ", mean ratio of the finite samples 1, 20/20 samples" in result.reason
    assert result.reason.endswith("(2 canary and 0 stable samples infinite, ranked beyond every finite one; "
                                  "no more on a track than chance allows (Boschloo's exact test p=0.14 ≥ 0.01))")


def test_a_stable_beyond_every_bucket_makes_the_canary_low() -> None:
    result = judge.compare(BASE, _half_beyond(10, True), confidence=0.98, tolerance=0.25)
    assert result.classification is Classification.LOW and "more on stable than chance allows" in result.reason


def test_as_many_samples_beyond_the_buckets_on_both_tracks_are_left_to_the_rank_test() -> None:
    both = _half_beyond(6, True)
    assert judge.compare(both, both, confidence=0.98, tolerance=0.25).classification is Classification.PASS
    result = judge.compare([v + 600 for v in both], both, confidence=0.98, tolerance=0.25)
    assert result.classification is Classification.HIGH and result.reason.startswith("higher than stable: shift +")


# an error ratio as a fraction (in 1e-8): stable about 0.01 %, the canary 50 % worse with every sample above stable's;
# as fractions the canary passed ("no shift beyond the noise"), the same samples in percent failed
_RATIO_STABLE = [11020, 8722, 10210, 9716, 9774, 9892, 8990, 9884, 9567, 11660, 10110, 9824, 9859, 9666, 9472, 9805, 10240, 9881, 10480, 9900]
_RATIO_CANARY = [15020, 16160, 15410, 14620, 14860, 15410, 16450, 14800, 14820, 15750, 14340, 14780, 15660, 15440, 15070, 15500, 12880, 15770, 14280, 13750]
_STABLE = [v * 1e-8 for v in _RATIO_STABLE]
_WORSE = [v * 1e-8 for v in _RATIO_CANARY]
_HEALTHY = [(v + 50 * j) * 1e-8 for v, j in zip(reversed(_RATIO_STABLE), JITTER, strict=True)]


@pytest.mark.parametrize("scale", [1e-4, 1.0, 1e2, 1e4, 1e8])
@pytest.mark.parametrize(("canary", "classification"), [(_WORSE, Classification.HIGH), (_HEALTHY, Classification.PASS)], ids=["worse", "healthy"])
def test_the_verdict_does_not_depend_on_the_metrics_unit(canary: list[float], classification: Classification, scale: float) -> None:
    """The interval's ends were searched to an absolute 1e-4, in the metric's unit: samples smaller than that (a
    ratio as a fraction, seconds) had their estimate at the search range's edge and passed a canary 50 % worse."""
    result = judge.compare([v * scale for v in canary], [v * scale for v in _STABLE], confidence=0.98, tolerance=0.25)
    assert result.classification is classification, result.reason
    reference = judge.compare([v * 1e4 for v in canary], [v * 1e4 for v in _STABLE], confidence=0.98, tolerance=0.25)
    factor = scale / 1e4
    assert (result.shift, result.low, result.high) == pytest.approx((reference.shift * factor, reference.low * factor, reference.high * factor), rel=1e-6)
    if classification is Classification.HIGH:
        assert min(canary) > max(_STABLE) and result.low > 0


def test_the_shift_interval_narrows_with_lower_confidence() -> None:
    wide = judge.shift_interval(_canary(10), BASE, 0.99)
    narrow = judge.shift_interval(_canary(10), BASE, 0.8)
    assert wide[0] == pytest.approx(narrow[0], abs=1e-3)
    assert wide[1] < narrow[1] <= narrow[0] <= narrow[2] < wide[2]


# --- the score ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("metrics", "expected"),
    [
        ([ScoredMetric(1, True), ScoredMetric(1, True)], (100.0, False)),
        ([ScoredMetric(3, True), ScoredMetric(1, False)], (75.0, False)),
        ([ScoredMetric(1, True), ScoredMetric(3, False)], (25.0, False)),
        ([ScoredMetric(3, True), ScoredMetric(1, False), ScoredMetric(5, None)], (75.0, False)),  # no verdict: not counted
        ([ScoredMetric(1, True), ScoredMetric(1, True), ScoredMetric(1, False)], (66.67, False)),
        ([ScoredMetric(19, True), ScoredMetric(1, False, critical=True)], (0.0, True)),
        ([ScoredMetric(1, True, critical=True), ScoredMetric(1, False)], (50.0, False)),  # a passing critical metric is just a metric
        ([ScoredMetric(1, None, critical=True), ScoredMetric(1, True)], (100.0, False)),
        ([ScoredMetric(2, None)], (100.0, False)),
        ([], (100.0, False)),
    ],
)
def test_score_weighs_passing_metrics_over_judged_ones(metrics: list[ScoredMetric], expected: tuple[float, bool]) -> None:
    assert judge.score(metrics) == expected


def test_too_few_samples_to_reach_the_confidence_are_no_evidence_not_a_shift() -> None:
    # three samples a side cannot reach 98 % whatever they say: the "98 % interval" was the samples' range, and a
    # range that excluded 0 read HIGH (2.2 % of identical tracks, against 1 % nominal)
    few = judge.compare([10, 11, 12], [1, 2, 3], confidence=0.98, tolerance=0.25)
    assert few.classification is Classification.NO_DATA and "cannot show a shift at 98% confidence" in few.reason
    assert judge.compare([10, 11, 12, 13, 14], [1, 2, 3, 4, 5], confidence=0.98, tolerance=0.25).classification is Classification.HIGH
    assert judge.compare([10, 11, 12], [1, 2, 3], confidence=0.80, tolerance=0.25).classification is Classification.HIGH
    assert judge.compare([1, 3, 5], [2, 4, 6], confidence=0.98, tolerance=0.25).classification is Classification.PASS  # overlapping: a pass


@pytest.mark.parametrize(("canary", "stable"), [([487.5] * 30, [48.75] * 30), ([100.0] * 12, [0.0] * 12)], ids=["p95-one-bucket-each", "100-vs-0"])
def test_tracks_each_constant_and_apart_are_a_shift_however_many_samples(canary: list[float], stable: list[float]) -> None:
    # a histogram_quantile whose requests all fall in one bucket is constant: the interval's ends could not be
    # searched for (the range is one point), and the first version of the rule above took that for too few samples
    assert judge.compare(canary, stable, confidence=0.98, tolerance=0.25, min_samples=10).classification is Classification.HIGH
    assert judge.compare(stable, canary, confidence=0.98, tolerance=0.25, min_samples=10).classification is Classification.LOW
