"""The report's arithmetic: t-intervals over seeds, paired differences, verdicts.

Small pure functions (floats and dicts in, floats and strings out), each tested against a
NumPy / SciPy reference in tests/test_paper_harness.py.

A seed is the unit of replication: a cell's seeds are independent runs, and two cells with
the same seed share it (same data order and initial draws), so a comparison of two cells is
made per seed (a paired difference) and the interval is over those differences.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Mapping, Sequence

REPRODUCED = "reproduced"
CONTRADICTED = "contradicted"
INCONCLUSIVE = "inconclusive"
NOT_RUN = "not run"
VERDICTS = (REPRODUCED, CONTRADICTED, INCONCLUSIVE, NOT_RUN)


@dataclasses.dataclass(frozen=True)
class Interval:
    """Mean and two-sided Student-t interval of a sample.

    Attributes:
      mean: the sample mean (nan for no values).
      half_width: t_{(1+confidence)/2, n-1} * s / sqrt(n); nan for fewer than 2 values.
      n: the number of values.
      confidence: e.g. 0.95.
    """
    mean: float
    half_width: float
    n: int
    confidence: float = 0.95

    @property
    def low(self):
        return self.mean - self.half_width

    @property
    def high(self):
        return self.mean + self.half_width

    def excludes_zero(self):
        """+1 if the whole interval is above 0, -1 if below, 0 if it holds 0 (or is undefined)."""
        if not math.isfinite(self.half_width):
            return 0
        if self.low > 0:
            return 1
        if self.high < 0:
            return -1
        return 0

    def to_dict(self):
        return {"mean": json_float(self.mean), "half_width": json_float(self.half_width),
                "low": json_float(self.low), "high": json_float(self.high), "n": self.n,
                "confidence": self.confidence}


def json_float(x):
    """x, or None for nan / inf (JSON has no such numbers)."""
    return x if math.isfinite(x) else None


def _finite(values):
    """`values` as floats; a non-finite one is an error (a run that diverged must be looked at,
    not averaged)."""
    xs = [float(v) for v in values]
    if any(not math.isfinite(x) for x in xs):
        raise ValueError(f"non-finite value in {xs}")
    return xs


def _mean_sd(xs):
    """Mean and sample standard deviation (n - 1) of at least 2 floats."""
    mean = math.fsum(xs) / len(xs)
    return mean, math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (len(xs) - 1))


def t_quantile(p, df):
    """The p-quantile of Student's t with `df` degrees of freedom (SciPy's t.ppf)."""
    from scipy import stats  # pylint: disable=g-import-not-at-top
    return float(stats.t.ppf(p, df))


def t_interval(values: Sequence[float], confidence: float = 0.95) -> Interval:
    """Mean ± t-interval of `values` (sample standard deviation, n - 1 degrees of freedom).

    Args:
      values: the per-seed numbers (non-finite values are an error: a run that diverged
        must be looked at, not averaged).
      confidence: the two-sided coverage, in (0, 1).

    Returns:
      An `Interval`; half_width is nan for fewer than 2 values (no spread to estimate) and 0
      when all values are equal.

    Raises:
      ValueError: for a confidence outside (0, 1) or a non-finite value.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    xs = _finite(values)
    n = len(xs)
    if n == 0:
        return Interval(math.nan, math.nan, 0, confidence)
    if n < 2:
        return Interval(xs[0], math.nan, n, confidence)
    if min(xs) == max(xs):  # no spread (and no rounding noise in the mean)
        return Interval(xs[0], 0.0, n, confidence)
    mean, sd = _mean_sd(xs)
    half = t_quantile(0.5 + confidence / 2.0, n - 1) * sd / math.sqrt(n)
    return Interval(mean, half, n, confidence)


def paired_differences(plus: Sequence[Mapping[int, float]],
                       minus: Sequence[Mapping[int, float]]) -> dict:
    """{seed: sum of plus[seed] - sum of minus[seed]} over the seeds every term has.

    A difference a - b is plus=[a], minus=[b]; a difference of differences (a - b) - (c - d)
    is plus=[a, d], minus=[b, c]. Each term maps seed -> value.
    """
    terms = list(plus) + list(minus)
    if not terms:
        return {}
    seeds = set(terms[0])
    for term in terms[1:]:
        seeds &= set(term)
    return {s: math.fsum(t[s] for t in plus) - math.fsum(t[s] for t in minus)
            for s in sorted(seeds)}


def verdict(interval: Interval, direction: int) -> str:
    """The verdict of a paired comparison whose expected sign is `direction`.

    reproduced: the interval excludes 0 on the paper's side; contradicted: it excludes 0 on
    the other side; inconclusive: it holds 0, or cannot be computed (fewer than 2 seeds).
    """
    if direction not in (1, -1):
        raise ValueError(f"direction must be +1 or -1, got {direction}")
    side = interval.excludes_zero()
    if side == 0:
        return INCONCLUSIVE
    return REPRODUCED if side == direction else CONTRADICTED


def combine(verdicts: Sequence[str]) -> str:
    """One verdict for a finding from its checks' verdicts.

    not run: no check ran; contradicted: any check contradicts it; reproduced: every check
    that ran is reproduced; inconclusive otherwise. (A check that did not run does not count
    for or against; the report names it.)
    """
    ran = [v for v in verdicts if v != NOT_RUN]
    if not ran:
        return NOT_RUN
    if CONTRADICTED in ran:
        return CONTRADICTED
    if all(v == REPRODUCED for v in ran):
        return REPRODUCED
    return INCONCLUSIVE


def p_value(values: Sequence[float]) -> float:
    """Two-sided p-value of the one-sample t-test of mean 0 (SciPy's `ttest_1samp`).

    It agrees with `t_interval`: p < 1 - confidence when the interval excludes 0 (up to
    floating-point rounding when the t statistic sits on the critical value to ~1e-15).
    nan for fewer than 2 values (no test); with no spread, 0 for a non-zero mean, 1 for 0.
    """
    xs = _finite(values)
    n = len(xs)
    if n < 2:
        return math.nan
    if min(xs) == max(xs):
        return 0.0 if xs[0] != 0.0 else 1.0
    mean, sd = _mean_sd(xs)
    from scipy import stats  # pylint: disable=g-import-not-at-top
    return float(min(1.0, 2.0 * stats.t.sf(abs(mean) / (sd / math.sqrt(n)), n - 1)))


def holm(p_values: Sequence[float], alpha: float = 0.05) -> list:
    """Holm's step-down test of a family: which hypotheses are rejected at family-wise `alpha`.

    The i-th smallest of the m p-values is compared with alpha / (m - i + 1) (i from 1), in
    ascending order, stopping at the first that is not below it; everything before it is
    rejected. A nan p-value (a comparison with one seed: not tested) is never rejected and
    does not count in m.

    Returns:
      A list of booleans in the order of `p_values`.
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    tested = sorted((p, i) for i, p in enumerate(p_values) if math.isfinite(p))
    rejected = [False] * len(p_values)
    m = len(tested)
    for rank, (p, i) in enumerate(tested):
        if not p < alpha / (m - rank):
            break
        rejected[i] = True
    return rejected


def family_verdicts(checks: Sequence[tuple], alpha: float = 0.05) -> list:
    """Each check's verdict once the family of a finding's checks is tested together (Holm).

    Args:
      checks: (verdict, p-value, mean difference, direction) per check, the verdict being
        the check's own (`verdict`), so a check that did not run stays "not run".
      alpha: the family-wise error rate.

    Returns:
      A verdict per check: reproduced / contradicted when Holm rejects its hypothesis of no
      difference (by the sign of its mean against the paper's direction), inconclusive when
      it does not, not run as before.
    """
    ps = [p if v != NOT_RUN else math.nan for v, p, _, _ in checks]
    rejected = holm(ps, alpha)
    out = []
    for (v, _, mean, direction), rej in zip(checks, rejected):
        if v == NOT_RUN:
            out.append(NOT_RUN)
        elif not rej:
            out.append(INCONCLUSIVE)
        else:
            out.append(REPRODUCED if (mean > 0) == (direction > 0) else CONTRADICTED)
    return out


def power(mean: float, sd: float, n: int, confidence: float = 0.95) -> float:
    """The power of the two-sided paired t-test with n seeds when the true mean difference is
    `mean` and the seeds' standard deviation `sd`: P(the interval excludes 0).

    The t statistic is then noncentral t with n - 1 degrees of freedom and noncentrality
    mean / (sd / sqrt(n)).
    """
    if n < 2:
        raise ValueError(f"power needs at least 2 seeds, got {n}")
    if not sd > 0:
        raise ValueError(f"sd must be > 0, got {sd}")
    from scipy import stats  # pylint: disable=g-import-not-at-top
    df = n - 1
    crit = stats.t.ppf(0.5 + confidence / 2.0, df)
    nc = mean / (sd / math.sqrt(n))
    return float(stats.nct.sf(crit, df, nc) + stats.nct.cdf(-crit, df, nc))


def seeds_for_power(values: Sequence[float], target: float = 0.8, confidence: float = 0.95,
                    max_seeds: int = 30):
    """The fewest seeds (>= 2) at which a paired comparison with the mean and spread of
    `values` would exclude 0 with probability `target`: how many seeds to run where a
    difference is close to its spread. A planning estimate that takes the observed mean and
    standard deviation as the true ones.

    Returns:
      The number of seeds; None for fewer than 2 values, a mean of 0, or more than
      `max_seeds` needed; 2 when the values have no spread (any 2 would exclude 0).
    """
    xs = _finite(values)
    if len(xs) < 2:
        return None
    mean, sd = _mean_sd(xs)
    if mean == 0.0:
        return None
    if min(xs) == max(xs):
        return 2
    for n in range(2, max_seeds + 1):
        if power(mean, sd, n, confidence) >= target:
            return n
    return None


def first_step_reaching(curve: Sequence[tuple], threshold: float):
    """The first step whose value is >= threshold in [(step, value), ...] sorted by step;
    None if none is."""
    for step, value in sorted(curve):
        if value >= threshold:
            return step
    return None


def format_interval(interval: Interval, digits: int = 3, signed: bool = False) -> str:
    """'0.312 ± 0.021' (n < 2: '0.312 (n=1)'; no values: '—'); signed: '+0.312 ± 0.021'."""
    if interval.n == 0:
        return "—"
    mean = f"{interval.mean:+.{digits}f}" if signed else f"{interval.mean:.{digits}f}"
    if not math.isfinite(interval.half_width):
        return f"{mean} (n={interval.n})"
    return f"{mean} ± {interval.half_width:.{digits}f}"
