"""Statistics over seeds: mean ± confidence interval, paired comparisons, and a verdict the numbers allow.

An experiment runs every method with the same seeds (:mod:`tdfusion_core.apps.experiment`); seed ``s`` of two methods
shares the data, the downstream network's initialisation and its sample order, so methods are compared **paired**:
per seed the difference ``d_s = a_s − b_s``, then

* the Student-t interval ``mean(d) ± t_{1−α/2, n−1} · sd(d)/√n`` and the two-sided p-value of ``mean(d) = 0``;
* a seeded percentile bootstrap interval of ``mean(d)`` (resampling seeds), which does not assume normality.

The t distribution is computed here (regularised incomplete beta by a continued fraction, Numerical Recipes §6.4,
and bisection for the quantile) so that the core needs no scipy; the tests compare it with ``scipy.stats.t``.

:func:`verdict` turns an interval into words: "ahead" only when the whole interval is above zero, "behind" only when
it is below, else "not distinguishable" — never more than the interval allows.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import attrs

__all__ = ["PairedComparison", "Summary", "mean_ci", "paired_comparison", "t_cdf", "t_quantile", "verdict"]


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 400):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta ``I_x(a, b)``."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """``P(T ≤ t)`` for Student's t with ``df`` degrees of freedom."""
    if df <= 0:
        raise ValueError(f"degrees of freedom must be positive, got {df}")
    if math.isinf(t):
        return 1.0 if t > 0 else 0.0
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom (bisection on :func:`t_cdf`)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if p == 0.5:
        return 0.0
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-13 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


def _clean(values: Sequence[float]) -> list[float]:
    return [float(v) for v in values if v is not None and not math.isnan(float(v))]


@attrs.define
class Summary:
    """Mean of ``n`` values and the half-width of its confidence interval (``nan`` when ``n < 2``)."""

    mean: float
    half_width: float
    n: int
    sd: float

    @property
    def low(self) -> float:
        return self.mean - self.half_width

    @property
    def high(self) -> float:
        return self.mean + self.half_width

    def format(self, digits: int = 3) -> str:
        if math.isnan(self.mean):
            return "—"
        if self.n < 2 or math.isnan(self.half_width):
            return f"{self.mean:.{digits}f}"
        return f"{self.mean:.{digits}f} ± {self.half_width:.{digits}f}"


def mean_ci(values: Sequence[float], level: float = 0.95) -> Summary:
    """Mean and Student-t confidence half-width of ``values`` (NaN and ``None`` dropped)."""
    xs = _clean(values)
    n = len(xs)
    if n == 0:
        return Summary(math.nan, math.nan, 0, math.nan)
    mean = sum(xs) / n
    if n < 2:
        return Summary(mean, math.nan, 1, math.nan)
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    return Summary(mean, t_quantile(0.5 + level / 2.0, n - 1) * sd / math.sqrt(n), n, sd)


@attrs.define
class PairedComparison:
    """``a − b`` over paired seeds: mean difference, t interval, p-value, bootstrap interval."""

    mean: float
    low: float
    high: float
    p_value: float
    boot_low: float
    boot_high: float
    n: int

    def as_dict(self) -> dict[str, float]:
        return attrs.asdict(self)


def paired_comparison(
    a: Sequence[float], b: Sequence[float], level: float = 0.95, n_boot: int = 10_000, seed: int = 0
) -> PairedComparison:
    """Compare paired samples ``a`` and ``b`` (index ``i`` of both from the same seed); pairs with NaN are dropped.

    With fewer than two pairs the interval and p-value are NaN; the bootstrap interval needs at least four. All differences equal (zero spread) gives a zero-width
    interval: p = 1 when they are zero, else 0.
    """
    if len(a) != len(b):
        raise ValueError(f"paired samples need the same length, got {len(a)} and {len(b)}")
    d = [float(x) - float(y) for x, y in zip(a, b) if not (math.isnan(float(x)) or math.isnan(float(y)))]
    n = len(d)
    nan = math.nan
    if n == 0:
        return PairedComparison(nan, nan, nan, nan, nan, nan, 0)
    summary = mean_ci(d, level)
    if n < 2:
        return PairedComparison(summary.mean, nan, nan, nan, nan, nan, n)
    if summary.sd == 0.0:
        p = 1.0 if summary.mean == 0.0 else 0.0
    else:
        t = summary.mean / (summary.sd / math.sqrt(n))
        p = 2.0 * (1.0 - t_cdf(abs(t), n - 1))
    if n < 4:  # a percentile bootstrap over 2-3 seeds is far too narrow: report the t interval only
        return PairedComparison(summary.mean, summary.low, summary.high, p, nan, nan, n)
    rng = random.Random(seed)
    means = sorted(sum(rng.choice(d) for _ in range(n)) / n for _ in range(n_boot))
    alpha = (1.0 - level) / 2.0
    boot_low = means[math.floor(alpha * (n_boot - 1))]
    boot_high = means[math.ceil((1.0 - alpha) * (n_boot - 1))]
    return PairedComparison(summary.mean, summary.low, summary.high, p, boot_low, boot_high, n)


def verdict(low: float, high: float, higher_is_better: bool = True) -> str:
    """``"ahead"``, ``"behind"`` or ``"not distinguishable"`` from the interval of a difference (method − reference)."""
    if math.isnan(low) or math.isnan(high):
        return "not distinguishable"
    if low > 0:
        return "ahead" if higher_is_better else "behind"
    if high < 0:
        return "behind" if higher_is_better else "ahead"
    return "not distinguishable"
