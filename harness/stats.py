"""Paired statistics for comparing a base and a candidate checkpoint on the same items.

``compare`` hands this module two aligned 0/1 correctness vectors per task (one entry per
benchmark item, base and candidate in the same order) and gets back plain numbers for the
gate and the report::

    from harness.stats import holm, paired_summary
    rows = {task: paired_summary(base[task], cand[task]) for task in tasks}
    adjusted = holm([row["mcnemar_p"] for row in rows.values()])

Everything here is a pure function: no I/O, no global state, vectorised numpy/scipy, and
closed form where possible, so 100k items take milliseconds. Randomness (the bootstrap,
kept only as a cross-check of the closed-form interval) is seeded.

The paired 2x2 table of an item set, in the names used throughout::

                      candidate right   candidate wrong
    base right        both              neg  (negative flip, right -> wrong)
    base wrong        pos (positive)    neither

Choices:

- Proportions get Wilson score intervals (good coverage down to n of a few dozen, never
  outside [0, 1]).
- delta = acc(candidate) - acc(base) gets Newcombe's square-and-add interval for paired
  proportions (Newcombe 1998, Stat Med 17:2635, method 10): Wilson intervals of the two
  margins combined with the phi correlation of the table, with Newcombe's correction of
  phi toward 0 by N/2 when it is positive.
- McNemar's test is the exact two-sided binomial test on the discordant pairs.
- The minimum detectable drop inverts Connor's (1987) McNemar sample-size formula; see
  ``min_detectable_drop``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats

__all__ = [
    "holm",
    "mcnemar_exact",
    "min_detectable_drop",
    "paired_bootstrap_ci",
    "paired_delta_ci",
    "paired_summary",
    "rate_interval",
    "wilson_interval",
]


def _z(conf: float) -> float:
    """The two-sided standard-normal quantile for a confidence level in (0, 1)."""
    if not 0.0 < conf < 1.0:
        raise ValueError(f"confidence level must be in (0, 1), got {conf}")
    return float(stats.norm.ppf(0.5 + conf / 2.0))


def _wilson(k: ArrayLike, n: ArrayLike, z: float) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised Wilson score bounds; n == 0 gives the uninformative (0, 1)."""
    k, n = np.asarray(k, dtype=float), np.asarray(n, dtype=float)
    safe_n = np.where(n > 0, n, 1.0)
    p = k / safe_n
    denom = 1.0 + z * z / safe_n
    centre = (p + z * z / (2.0 * safe_n)) / denom
    half = z / denom * np.sqrt(p * (1.0 - p) / safe_n + z * z / (4.0 * safe_n**2))
    # k == 0 and k == n bound exactly at 0 and 1 (the formula leaves rounding dust).
    lo = np.where((n > 0) & (k > 0), np.clip(centre - half, 0.0, 1.0), 0.0)
    hi = np.where((n > 0) & (k < n), np.clip(centre + half, 0.0, 1.0), 1.0)
    return lo, hi


def _cells(base: ArrayLike, cand: ArrayLike) -> tuple[int, int, int, int]:
    """Count (both, neg, pos, neither) of two aligned 0/1 correctness vectors."""
    b, c = np.asarray(base), np.asarray(cand)
    if b.ndim != 1 or b.shape != c.shape:
        raise ValueError(f"need two 1-D vectors of equal length, got {b.shape} and {c.shape}")
    if not (np.isin(b, (0, 1)).all() and np.isin(c, (0, 1)).all()):
        raise ValueError("correctness vectors must hold only 0/1 (or booleans)")
    b, c = b.astype(bool), c.astype(bool)
    both, neg, pos = int(np.sum(b & c)), int(np.sum(b & ~c)), int(np.sum(~b & c))
    return both, neg, pos, b.size - both - neg - pos


def _newcombe(
    both: ArrayLike, neg: ArrayLike, pos: ArrayLike, neither: ArrayLike, z: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Vectorised Newcombe (1998, method 10) interval for acc(cand) - acc(base).

    Returns (delta, lo, hi) arrays; an empty table gives (0, -1, 1).
    """
    both, neg, pos, neither = (np.asarray(x, dtype=float) for x in (both, neg, pos, neither))
    n = both + neg + pos + neither
    safe_n = np.where(n > 0, n, 1.0)
    k_cand, k_base = both + pos, both + neg
    p_cand, p_base = k_cand / safe_n, k_base / safe_n
    lo_c, hi_c = _wilson(k_cand, n, z)
    lo_b, hi_b = _wilson(k_base, n, z)
    margins = k_cand * (neg + neither) * k_base * (pos + neither)
    cross = both * neither - pos * neg
    # Newcombe shrinks a positive cross-product by N/2 (a continuity correction on phi).
    cross = np.where(cross > n / 2.0, cross - n / 2.0, np.minimum(cross, 0.0))
    phi = np.where(margins > 0, cross / np.sqrt(np.where(margins > 0, margins, 1.0)), 0.0)
    d_lo, d_hi = p_cand - lo_c, hi_b - p_base
    u_hi, u_lo = hi_c - p_cand, p_base - lo_b
    below = np.sqrt(np.maximum(d_lo**2 - 2.0 * phi * d_lo * d_hi + d_hi**2, 0.0))
    above = np.sqrt(np.maximum(u_hi**2 - 2.0 * phi * u_hi * u_lo + u_lo**2, 0.0))
    delta = p_cand - p_base
    lo = np.where(n > 0, np.clip(delta - below, -1.0, 1.0), -1.0)
    hi = np.where(n > 0, np.clip(delta + above, -1.0, 1.0), 1.0)
    return delta, lo, hi


def wilson_interval(k: int, n: int, conf: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for k successes out of n; n == 0 gives (0.0, 1.0)."""
    if n < 0 or not 0 <= k <= max(n, 0):
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    lo, hi = _wilson(k, n, _z(conf))
    return float(lo), float(hi)


def rate_interval(k: int, n: int, conf: float = 0.95) -> tuple[float, float, float]:
    """(k / n, Wilson lo, Wilson hi); used for negative and positive flip rates.

    n == 0 gives (0.0, 0.0, 1.0): no evidence, so the interval spans everything.
    """
    lo, hi = wilson_interval(k, n, conf)
    return (k / n if n else 0.0), lo, hi


def paired_delta_ci(base: np.ndarray, cand: np.ndarray, conf: float = 0.95) -> tuple[float, float, float]:
    """(delta, lo, hi) for delta = acc(cand) - acc(base) on the same items.

    Newcombe's paired square-and-add score interval (method 10). Empty input gives
    (0.0, -1.0, 1.0).
    """
    delta, lo, hi = _newcombe(*_cells(base, cand), _z(conf))
    return float(delta), float(lo), float(hi)


def paired_bootstrap_ci(
    base: np.ndarray, cand: np.ndarray, conf: float = 0.95, n_boot: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """(delta, lo, hi) by a seeded percentile bootstrap over items.

    Resampling items with replacement only changes the four cell counts of the paired
    table, so each replicate is one multinomial draw: O(n_boot), not O(n_boot * n).
    Kept as an independent check of ``paired_delta_ci``.
    """
    counts = np.array(_cells(base, cand))
    n = int(counts.sum())
    if n == 0:
        return 0.0, -1.0, 1.0
    draws = np.random.default_rng(seed).multinomial(n, counts / n, size=n_boot)
    deltas = (draws[:, 2] - draws[:, 1]) / n
    lo, hi = np.quantile(deltas, [(1.0 - conf) / 2.0, (1.0 + conf) / 2.0])
    return float((counts[2] - counts[1]) / n), float(lo), float(hi)


def mcnemar_exact(n_neg: int, n_pos: int) -> float:
    """Two-sided exact McNemar p-value: binomial test of the discordant pairs at p = 0.5.

    Doubles the smaller tail (exact for p = 0.5, which is symmetric); 1.0 when there are
    no discordant pairs.
    """
    if n_neg < 0 or n_pos < 0:
        raise ValueError(f"counts must be >= 0, got {n_neg}, {n_pos}")
    total = n_neg + n_pos
    if total == 0:
        return 1.0
    return float(min(1.0, 2.0 * stats.binom.cdf(min(n_neg, n_pos), total, 0.5)))


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm step-down adjusted p-values, monotone, capped at 1, in the input's order."""
    p = np.asarray(pvalues, dtype=float)
    if p.size == 0:
        return []
    order = np.argsort(p, kind="stable")
    scaled = p[order] * np.arange(p.size, 0, -1)
    adjusted = np.empty_like(p)
    adjusted[order] = np.minimum(np.maximum.accumulate(scaled), 1.0)
    return [float(x) for x in adjusted]


def min_detectable_drop(n: int, discordant_rate: float, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest true accuracy drop a two-sided paired test on n items detects with `power`.

    Connor (1987) gives the McNemar sample size for discordance psi = P(neg) + P(pos) and
    drop d = P(neg) - P(pos)::

        n = (z_a * sqrt(psi) + z_b * sqrt(psi - d**2))**2 / d**2,
        z_a = z(1 - alpha/2), z_b = z(power).

    Writing d = t * sqrt(psi) makes it psi-free, sqrt(n) * t - z_a = z_b * sqrt(1 - t**2),
    whose root is::

        r = (sqrt(n) * z_a + z_b * sqrt(n + z_b**2 - z_a**2)) / (n + z_b**2),

    so d = r * sqrt(psi) (about (z_a + z_b) * sqrt(psi / n) for large n). A drop cannot
    exceed the discordance it causes, so when r * sqrt(psi) > psi (in particular when
    psi == 0) we solve with psi = d instead, i.e. all discordant items are the drop's own
    negative flips, which gives d = r**2. Together: d = r * max(sqrt(psi), r); never 0
    for finite n. Capped at 1.0, which is also the answer when n is too small for any
    drop to be detectable (n <= z_a**2, or n == 0).
    """
    if not 0.0 <= discordant_rate <= 1.0:
        raise ValueError(f"discordant_rate must be in [0, 1], got {discordant_rate}")
    z_a, z_b = _z(1.0 - alpha), float(stats.norm.ppf(power))
    if n <= z_a * z_a:
        return 1.0
    r = (np.sqrt(n) * z_a + z_b * np.sqrt(n + z_b * z_b - z_a * z_a)) / (n + z_b * z_b)
    return float(min(1.0, r * max(np.sqrt(discordant_rate), r)))


def paired_summary(base: np.ndarray, cand: np.ndarray) -> dict[str, float | int]:
    """Every paired measure of one item set, as JSON-ready Python numbers (95% level).

    Keys: n; acc_base, acc_candidate and their Wilson ``_lo``/``_hi``; delta, delta_lo,
    delta_hi (Newcombe); negative_flips, positive_flips (counts); nfr, pfr (flip counts
    over n, with ``_lo``/``_hi``); mcnemar_p (exact, unadjusted); mdd (the drop detectable
    with 80% power at alpha 0.05, given the observed discordant rate).
    """
    both, neg, pos, neither = _cells(base, cand)
    n = both + neg + pos + neither
    acc_b, acc_b_lo, acc_b_hi = rate_interval(both + neg, n)
    acc_c, acc_c_lo, acc_c_hi = rate_interval(both + pos, n)
    delta, delta_lo, delta_hi = (float(x) for x in _newcombe(both, neg, pos, neither, _z(0.95)))
    nfr, nfr_lo, nfr_hi = rate_interval(neg, n)
    pfr, pfr_lo, pfr_hi = rate_interval(pos, n)
    return {
        "n": n,
        "acc_base": acc_b,
        "acc_base_lo": acc_b_lo,
        "acc_base_hi": acc_b_hi,
        "acc_candidate": acc_c,
        "acc_candidate_lo": acc_c_lo,
        "acc_candidate_hi": acc_c_hi,
        "delta": delta,
        "delta_lo": delta_lo,
        "delta_hi": delta_hi,
        "negative_flips": neg,
        "positive_flips": pos,
        "nfr": nfr,
        "nfr_lo": nfr_lo,
        "nfr_hi": nfr_hi,
        "pfr": pfr,
        "pfr_lo": pfr_lo,
        "pfr_hi": pfr_hi,
        "mcnemar_p": mcnemar_exact(neg, pos),
        "mdd": min_detectable_drop(n, (neg + pos) / n if n else 0.0),
    }
