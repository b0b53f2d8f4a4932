"""The statistical judge: canary against stable, same window, Kayenta's Mann–Whitney classifier. Pure.

For one metric, the canary's and stable's samples over the analysis window
(one per ``step``, from ``query_range``; NaN dropped, ±Inf ranked beyond every
finite sample) are compared with the Mann–Whitney
rank test the way Kayenta's NetflixACAJudge does:

- the shift between the two distributions (canary − stable) is estimated as
  the root of the normal-approximated, continuity-corrected, tie-corrected test
  statistic (R's ``wilcox.test(conf.int = TRUE, exact = FALSE)``), and its
  two-sided confidence interval at ``confidence`` likewise;
- the canary is **High** when the interval's lower end is above
  ``tolerance × |shift|`` and the ratio of means reaches ``allowed_increase``
  (**Low** the mirror image); otherwise it **Passes** — a p-value alone never
  fails a release, the interval must clear the shift's own scale;
- ``direction`` says which of High and Low is a failure;
- infinite samples (a quantile beyond the histogram's largest bucket) are
  counted apart: a track with more of them than chance allows (Fisher's exact
  test at the interval's level, Boschloo's where the tracks are small) is High
  or Low whatever the shift's size, and two tracks all infinite (however many
  samples each has) are no data, not identical.

The verdict depends on the samples' order and ratios only, not on their unit:
the same samples in percent or as fractions, in ms or in s, are judged alike.

``score`` turns the metrics' verdicts into Kayenta's 0–100 release score.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

# numpy and scipy are imported where a judge runs, not with the package: every canary command (and
# Pulumi's language host) would otherwise pay about a second and a half for them.


class Classification(enum.StrEnum):
    PASS = "pass"
    HIGH = "high"
    LOW = "low"
    NO_DATA = "no-data"


@dataclass(frozen=True)
class Comparison:
    classification: Classification
    shift: float
    low: float
    high: float
    mean_ratio: float
    canary_samples: int
    stable_samples: int
    reason: str


def _statistic(x: np.ndarray, y: np.ndarray, mu: float) -> tuple[float, float]:
    """(U_x − nx·ny/2, σ) of the rank test of ``x − mu`` against ``y``, σ tie-corrected."""
    nx, ny = len(x), len(y)
    import numpy as np
    from scipy.stats import rankdata

    combined = np.concatenate([x - mu, y])
    ranks = rankdata(combined)
    dz = float(ranks[:nx].sum() - nx * (nx + 1) / 2 - nx * ny / 2)
    _, counts = np.unique(combined, return_counts=True)
    ties = float(((counts**3) - counts).sum())
    n = nx + ny
    sigma = math.sqrt(nx * ny / 12 * ((n + 1) - ties / (n * (n - 1))))
    return dz, sigma


def _f(x: np.ndarray, y: np.ndarray, mu: float, q: float) -> float:
    dz, sigma = _statistic(x, y, mu)
    if sigma == 0:
        return -q
    correction = 0.5 * math.copysign(1.0, dz) if dz else 0.0
    return (dz - correction) / sigma - q


def _root(x: np.ndarray, y: np.ndarray, q: float, low: float, high: float) -> float:
    f_low, f_high = _f(x, y, low, q), _f(x, y, high, q)
    if f_low * f_high > 0:
        # no sign change in the range: the interval ends at the range's edge (as R's uniroot does not, Kayenta clamps)
        return low if abs(f_low) < abs(f_high) else high
    if f_low == 0:
        return low
    if f_high == 0:
        return high
    from scipy.optimize import brentq

    # the tolerance is the range's own scale: an absolute one (1e-4) is in the metric's unit, and an error ratio as a
    # fraction or a latency in seconds is smaller than that: the root landed on the range's edge and a canary 50 %
    # worse, every sample above stable's, passed where the same samples in percent failed
    xtol = max(1e-9 * (high - low), math.ulp(max(abs(low), abs(high))))
    return float(brentq(lambda mu: _f(x, y, mu, q), low, high, xtol=xtol))


def shift_interval(canary: Sequence[float], stable: Sequence[float], confidence: float) -> tuple[float, float, float]:
    """(estimate, low, high) of the shift canary − stable, the interval two-sided at ``confidence``."""
    import numpy as np
    from scipy.stats import norm

    x, y = np.asarray(canary, dtype=float), np.asarray(stable, dtype=float)
    # the shifts searched are those the finite samples can tell apart: an infinite sample minus any shift stays
    # infinite, ranked beyond every finite one and tied with the other track's (a caller with no finite sample on a
    # side passes finite stand-ins, ``_finite_ranks``)
    fx, fy = x[np.isfinite(x)], y[np.isfinite(y)]
    low_end, high_end = float(fx.min() - fy.max()), float(fx.max() - fy.min())
    z = float(norm.ppf((1 - confidence) / 2))
    lower = _root(x, y, -z, low_end, high_end)
    upper = _root(x, y, z, low_end, high_end)
    estimate = _root(x, y, 0.0, low_end, high_end)
    return estimate, min(lower, upper), max(lower, upper)


def _rejects_no_shift(canary: Sequence[float], stable: Sequence[float], confidence: float, *, higher: bool) -> bool:
    """Whether the rank test rejects "no shift" at ``confidence`` (two-sided), in the direction ``higher``."""
    import numpy as np
    from scipy.stats import norm

    x, y = np.asarray(canary, dtype=float), np.asarray(stable, dtype=float)
    z = -float(norm.ppf((1 - confidence) / 2))
    return _f(x, y, 0.0, z) >= 0 if higher else _f(x, y, 0.0, -z) <= 0


def compare(
    canary: Sequence[float],
    stable: Sequence[float],
    *,
    confidence: float,
    tolerance: float,
    allowed_increase: float = 1.0,
    allowed_decrease: float = 1.0,
    min_samples: int = 3,
) -> Comparison:
    """Classify the canary's samples against stable's.

    NaN samples are dropped; infinite ones are kept and ranked beyond every finite sample (a
    ``histogram_quantile`` in the ``+Inf`` bucket is the slowest canary there is, not a missing one).
    """
    canary = [v for v in canary if not math.isnan(v)]
    stable = [v for v in stable if not math.isnan(v)]
    nx, ny = len(canary), len(stable)
    if nx < min_samples or ny < min_samples:
        return Comparison(Classification.NO_DATA, math.nan, math.nan, math.nan, math.nan, nx, ny,
                          f"{nx} canary and {ny} stable samples: fewer than {min_samples} on a side")
    with_inf = sum(not math.isfinite(v) for v in canary), sum(not math.isfinite(v) for v in stable)
    mean_c, mean_s = sum(canary) / nx, sum(stable) / ny
    ratio = mean_c / mean_s if mean_s else math.nan  # inf on a side: inf, 0 or NaN (both), as the values say
    if not any(map(math.isfinite, (*canary, *stable))):
        # every sample of both tracks beyond the histogram's range, however many on each: they tie, and a tie is no
        # evidence that the canary is as fast as stable (it may be ten times slower); as a compare's +Inf − +Inf, it is no pass
        kinds = " or ".join(sorted({f"{v:+g}" for v in (*canary, *stable)}, reverse=True))
        return Comparison(Classification.NO_DATA, math.nan, math.nan, math.nan, ratio, nx, ny,
                          f"all {nx} canary and {ny} stable samples are {kinds} (beyond the histogram's buckets): "
                          "nothing to tell them apart by")
    beyond = _beyond_the_buckets(canary, stable, confidence)
    means = _means(canary, stable, ratio)
    # a side with no finite sample is ranked by stand-ins: alike, they say nothing of the samples being alike
    stood_in = not (any(map(math.isfinite, canary)) and any(map(math.isfinite, stable)))
    if stood_in:
        canary, stable = _finite_ranks(canary, stable)
    if not stood_in and (sorted(canary) == sorted(stable) or len(set(canary) | set(stable)) == 1):
        return Comparison(Classification.PASS, 0.0, 0.0, 0.0, ratio, nx, ny, "the samples are identical")
    estimate, low, high = shift_interval(canary, stable, confidence)
    bound = tolerance * abs(estimate)
    text = f"shift {estimate:+.4g} ({confidence:.0%} interval [{low:.4g}, {high:.4g}]), {means}, {nx}/{ny} samples"
    if any(with_inf):
        text += f" ({with_inf[0]} canary and {with_inf[1]} stable samples infinite, ranked beyond every finite one"
        text += f"; {beyond[1]})" if beyond is not None and beyond[0] is None else ")"
    if beyond is not None and beyond[0] is not None:
        classification, why = beyond
        side = "higher than stable: " if classification is Classification.HIGH else "lower than stable: "
        return Comparison(classification, estimate, low, high, ratio, nx, ny, f"{side}{why}; rank test: {text}")
    if (low > 0 or high < 0) and not _rejects_no_shift(canary, stable, confidence, higher=low > 0):
        # an interval that excludes 0 where the rank test at 0 does not reject: clamped to the samples' range, as when
        # too few samples cannot reach the confidence at all (three a side at 98 %), and no evidence of a shift
        return Comparison(Classification.NO_DATA, estimate, low, high, ratio, nx, ny,
                          f"{nx} canary and {ny} stable samples cannot show a shift at {confidence:.0%} confidence (shift {estimate:+.4g}, "
                          f"samples' range [{low:.4g}, {high:.4g}]): too few to judge; raise minSamples or lower the confidence")
    effect_up = math.isnan(ratio) or ratio >= allowed_increase
    effect_down = math.isnan(ratio) or ratio <= allowed_decrease
    if low > bound and effect_up:
        return Comparison(Classification.HIGH, estimate, low, high, ratio, nx, ny, "higher than stable: " + text)
    if high < -bound and effect_down:
        return Comparison(Classification.LOW, estimate, low, high, ratio, nx, ny, "lower than stable: " + text)
    return Comparison(Classification.PASS, estimate, low, high, ratio, nx, ny, "no shift beyond the noise: " + text)


def _means(canary: list[float], stable: list[float], ratio: float) -> str:
    """The ratio of means as the reason shows it: with infinite samples, that of the finite ones (an infinite
    ratio next to "no shift beyond the noise" read as a contradiction; the infinite ones are counted apart)."""
    if math.isfinite(ratio) or all(map(math.isfinite, (*canary, *stable))):
        return f"mean ratio {ratio:.3g}"
    finite_c, finite_s = [v for v in canary if math.isfinite(v)], [v for v in stable if math.isfinite(v)]
    if not (finite_c and finite_s and sum(finite_s)):
        return "no mean ratio of finite samples"
    return f"mean ratio of the finite samples {sum(finite_c) / len(finite_c) / (sum(finite_s) / len(finite_s)):.3g}"


#: canary × stable samples up to which Boschloo's test is run: its cost grows with the product (some 0.01 s a test at 200 a side)
_BOSCHLOO_MOST = 40_000


def _beyond_the_buckets(canary: list[float], stable: list[float], confidence: float) -> tuple[Classification | None, str] | None:
    """Whether one track has more infinite samples than chance allows: an exact test, one-sided at the
    interval's own level on each side, ``(1 − confidence) / 2``. None: no infinite sample; else the verdict
    (None: no more than chance allows) and why.

    Fisher's test, and where it does not reject and the tracks are small, Boschloo's: Fisher's conditions on
    both margins and at ten samples a side is conservative (5 of 10 canary samples at +Inf against none on
    stable: p = 0.016, no rejection at 1 %); Boschloo's, unconditional, takes Fisher's p as its statistic and
    is exact at its level and never above Fisher's p (there: 0.0063). At hundreds of samples the two agree.

    Why apart from the rank test: an infinite sample is a ``histogram_quantile`` beyond the largest bucket. The rank
    test ranks it right (above every finite sample), but its shift can only be measured "as far as the finite samples
    go" (``_finite_ranks``), and Kayenta's effect-size rule then compares the interval with that understated shift: a
    canary whose p99 was beyond every bucket half the time passed as "no shift beyond the noise". The share of samples
    beyond the buckets is itself the evidence, and it needs no size: slower than the largest bucket exceeds any
    tolerance and any ``allowed_increase``. A few such samples on both tracks alike are left to the rank test.
    """
    if not any(math.isinf(v) for v in (*canary, *stable)):
        return None
    from scipy.stats import boschloo_exact, fisher_exact

    level = (1 - confidence) / 2
    least = (math.inf, "")
    for infinity in (math.inf, -math.inf):
        on_canary, on_stable = sum(v == infinity for v in canary), sum(v == infinity for v in stable)
        if not on_canary + on_stable:
            continue
        table = [[on_canary, len(canary) - on_canary], [on_stable, len(stable) - on_stable]]
        for more_on, alternative in (("canary", "greater"), ("stable", "less")):
            test, p_value = "Fisher's", float(fisher_exact(table, alternative=alternative).pvalue)
            if p_value >= level and len(canary) * len(stable) <= _BOSCHLOO_MOST:
                unconditional = float(boschloo_exact(table, alternative=alternative).pvalue)
                if unconditional < p_value:  # NaN (every sample of both tracks infinite alike) is not
                    test, p_value = "Boschloo's", unconditional
            if p_value < level:
                canary_higher = (infinity > 0) is (more_on == "canary")
                return (Classification.HIGH if canary_higher else Classification.LOW,
                        f"{on_canary} of {len(canary)} canary and {on_stable} of {len(stable)} stable samples are {infinity:+g} "
                        f"(beyond the histogram's buckets): more on {more_on} than chance allows ({test} exact test p={p_value:.2g} < {level:g})")
            least = min(least, (p_value, test))
    return None, f"no more on a track than chance allows ({least[1]} exact test p={least[0]:.2g} ≥ {level:g})"


def _finite_ranks(canary: list[float], stable: list[float]) -> tuple[list[float], list[float]]:
    """Both sides with ±Inf replaced by finite stand-ins beyond every finite sample, for a side with no finite
    sample at all (no shift range to search otherwise): ranks are kept (every +Inf ties with every other, above
    all finite samples); the shift's size then reads "at least this far", as far as the finite ones go. Where both
    sides have finite samples the infinities are kept: a stand-in moved by the shift searched would fall among the
    finite samples, and a canary 600 ms slower with as many +Inf samples as stable passed as no shift."""
    finite = [v for v in (*canary, *stable) if math.isfinite(v)]
    if len(finite) == len(canary) + len(stable):
        return canary, stable
    top, bottom = (max(finite), min(finite)) if finite else (0.0, 0.0)
    gap = (top - bottom) or abs(top) or 1.0  # the samples' own scale: a unit's 1.0 is no gap at 1e-4
    high, low = top + gap, bottom - gap

    def stand_in(v: float) -> float:
        return v if math.isfinite(v) else (high if v > 0 else low)

    return [stand_in(v) for v in canary], [stand_in(v) for v in stable]


@dataclass(frozen=True)
class ScoredMetric:
    weight: float
    passed: bool | None  # None: no verdict (no data): not counted
    critical: bool = False


def score(metrics: Sequence[ScoredMetric]) -> tuple[float, bool]:
    """Kayenta's score: 100 × the weight of passing metrics over the weight of judged ones (a run
    with nothing judged scores 100, which ``analysis.decide`` never lets pass: it holds), and whether a critical metric failed (the score is then 0)."""
    judged = [m for m in metrics if m.passed is not None]
    critical_failed = any(m.critical and m.passed is False for m in metrics)
    if critical_failed:
        return 0.0, True
    total = sum(m.weight for m in judged)
    if total == 0:
        return 100.0, False
    return round(100 * sum(m.weight for m in judged if m.passed) / total, 2), False
