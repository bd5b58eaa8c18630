"""Tests of harness.stats against independent references, simulations and edge cases.

References: statsmodels (Wilson, exact McNemar, Holm), scipy (binomial test), the
published Newcombe square-and-add value in Fagerland, Lydersen & Laake (2017, ch. 8), and a
seeded paired bootstrap. Simulations are seeded and vectorised over the four cell counts.
"""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from scipy import stats as sps
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.proportion import proportion_confint

from harness import stats
from harness.stats import (
    holm,
    mcnemar_exact,
    min_detectable_drop,
    paired_bootstrap_ci,
    paired_delta_ci,
    paired_summary,
    rate_interval,
    wilson_interval,
)


def vectors(both: int, neg: int, pos: int, neither: int) -> tuple[np.ndarray, np.ndarray]:
    """Aligned (base, cand) 0/1 vectors with the given paired cell counts."""
    base = np.repeat([1, 1, 0, 0], [both, neg, pos, neither])
    cand = np.repeat([1, 0, 1, 0], [both, neg, pos, neither])
    return base, cand


def exact_mcnemar_p(neg: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """Vectorised exact two-sided McNemar p-values, for simulations."""
    total = neg + pos
    p = np.minimum(1.0, 2.0 * sps.binom.cdf(np.minimum(neg, pos), total, 0.5))
    return np.where(total > 0, p, 1.0)


# --- Wilson ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("k", "n", "conf"),
    [
        (0, 1, 0.95),
        (1, 1, 0.95),
        (0, 10, 0.95),
        (3, 10, 0.95),
        (10, 10, 0.95),
        (50, 100, 0.9),
        (1, 1000, 0.99),
        (999, 1000, 0.95),
        (73_412, 100_000, 0.95),
    ],
)
def test_wilson_matches_statsmodels(k: int, n: int, conf: float) -> None:
    expected = proportion_confint(k, n, alpha=1 - conf, method="wilson")
    assert wilson_interval(k, n, conf) == pytest.approx(expected, abs=1e-12)


def test_wilson_empty_is_uninformative() -> None:
    assert wilson_interval(0, 0) == (0.0, 1.0)
    assert rate_interval(0, 0) == (0.0, 0.0, 1.0)


@pytest.mark.parametrize(("k", "n"), [(-1, 5), (6, 5), (0, -1)])
def test_wilson_rejects_bad_counts(k: int, n: int) -> None:
    with pytest.raises(ValueError):
        wilson_interval(k, n)


def test_rate_interval_is_rate_with_wilson() -> None:
    rate, lo, hi = rate_interval(7, 200)
    assert rate == 7 / 200
    assert (lo, hi) == pytest.approx(proportion_confint(7, 200, method="wilson"), abs=1e-12)


# --- McNemar -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("neg", "pos"),
    [(0, 1), (1, 0), (3, 3), (5, 0), (10, 2), (2, 10), (17, 9), (40, 60), (130, 170), (400, 380), (1, 25)],
)
def test_mcnemar_matches_statsmodels_and_scipy(neg: int, pos: int) -> None:
    table = [[50, neg], [pos, 50]]
    by_statsmodels = mcnemar(table, exact=True).pvalue
    by_scipy = sps.binomtest(neg, neg + pos, 0.5).pvalue
    assert mcnemar_exact(neg, pos) == pytest.approx(by_statsmodels, rel=1e-9, abs=1e-15)
    assert mcnemar_exact(neg, pos) == pytest.approx(by_scipy, rel=1e-9, abs=1e-15)


def test_mcnemar_no_discordant_pairs() -> None:
    assert mcnemar_exact(0, 0) == 1.0


# --- Holm --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "pvalues",
    [
        [0.01],
        [0.01, 0.04, 0.03],
        [0.5, 0.001, 0.02, 0.02, 0.9],
        [0.2, 0.2, 0.2],
        [1e-8, 0.049, 0.3, 0.04, 0.6, 0.011],
        [0.9, 0.8],
    ],
)
def test_holm_matches_statsmodels(pvalues: list[float]) -> None:
    expected = multipletests(pvalues, method="holm")[1]
    got = holm(pvalues)
    assert got == pytest.approx(list(expected), abs=1e-12)
    assert all(isinstance(x, float) and 0.0 <= x <= 1.0 for x in got)
    ranked = sorted(zip(pvalues, got))
    assert all(a[1] <= b[1] for a, b in itertools.pairwise(ranked))


def test_holm_empty() -> None:
    assert holm([]) == []


# --- paired delta interval ---------------------------------------------------------


def test_newcombe_matches_published_value() -> None:
    # Cavo et al. (2012) via Fagerland, Lydersen & Laake, Statistical Analysis of
    # Contingency Tables (2017), ch. 8: estimate -0.0621, 95% CI -0.1186 to -0.0046,
    # first variable (here the candidate) in rows: [[59, 6], [16, 80]].
    delta, lo, hi = paired_delta_ci(*vectors(both=59, neg=16, pos=6, neither=80))
    assert (delta, lo, hi) == pytest.approx((-0.0621, -0.1186, -0.0046), abs=5e-5)


# Realistic benchmark tables (both, neg, pos, neither), n from 500 to 5000.
REALISTIC = [
    (300, 40, 25, 135),
    (650, 30, 45, 275),
    (1400, 160, 90, 350),
    (3100, 220, 180, 1500),
    (4000, 15, 5, 980),
]


@pytest.mark.parametrize("cells", REALISTIC)
def test_newcombe_agrees_with_bootstrap(cells: tuple[int, int, int, int]) -> None:
    # Tolerance 0.003 on each bound: under 10% of the half-widths at n <= 2000, above the
    # bootstrap's grid step (1/n) at n = 500 and its Monte-Carlo error from 4000 draws.
    # Observed differences are at most 0.0017.
    base, cand = vectors(*cells)
    delta, lo, hi = paired_delta_ci(base, cand)
    b_delta, b_lo, b_hi = paired_bootstrap_ci(base, cand, n_boot=4000, seed=1)
    assert delta == pytest.approx(b_delta, abs=1e-12)
    assert lo < delta < hi
    assert lo == pytest.approx(b_lo, abs=0.003)
    assert hi == pytest.approx(b_hi, abs=0.003)


def test_bootstrap_is_seeded() -> None:
    base, cand = vectors(*REALISTIC[0])
    assert paired_bootstrap_ci(base, cand, seed=3) == paired_bootstrap_ci(base, cand, seed=3)


# True cell probabilities (both, neg, pos, neither) and n for the coverage simulation.
COVERAGE = [
    ((0.60, 0.08, 0.05, 0.27), 1000),
    ((0.85, 0.02, 0.01, 0.12), 2000),
    ((0.30, 0.10, 0.10, 0.50), 500),
]


@pytest.mark.parametrize(("probs", "n"), COVERAGE)
def test_delta_interval_coverage(probs: tuple[float, ...], n: int) -> None:
    # Seeded, vectorised over 400 simulated paired datasets via the internal counts API.
    cells = np.random.default_rng(7).multinomial(n, probs, size=400).T
    _, lo, hi = stats._newcombe(*cells, z=1.959963984540054)
    truth = probs[2] - probs[1]
    coverage = np.mean((lo <= truth) & (truth <= hi))
    assert 0.92 <= coverage <= 0.98


def test_vectorised_newcombe_matches_scalar() -> None:
    cells = np.array(REALISTIC).T
    _, lo, hi = stats._newcombe(*cells, z=1.959963984540054)
    for i, row in enumerate(REALISTIC):
        _, s_lo, s_hi = paired_delta_ci(*vectors(*row))
        assert (s_lo, s_hi) == pytest.approx((lo[i], hi[i]), abs=1e-15)


# --- minimum detectable drop -------------------------------------------------------


@pytest.mark.parametrize("rate", [0.0, 0.01, 0.05, 0.2, 0.5])
def test_mdd_decreases_with_n(rate: float) -> None:
    mdds = [min_detectable_drop(n, rate) for n in (10, 50, 200, 1000, 5000, 100_000)]
    assert all(0.0 < m <= 1.0 for m in mdds)
    assert all(a > b for a, b in itertools.pairwise(mdds))


@pytest.mark.parametrize(("n", "rate"), [(2000, 0.10), (5000, 0.04), (800, 0.25), (500, 0.0)])
def test_mdd_has_nominal_power(n: int, rate: float) -> None:
    # Simulate 400 datasets with the discordance split so the drop is exactly the mdd
    # (rate 0: all discordant items are the drop's own negative flips) and count how
    # often the exact McNemar test rejects at alpha 0.05.
    drop = min_detectable_drop(n, rate)
    psi = max(rate, drop)
    probs = [1.0 - psi, (psi + drop) / 2, (psi - drop) / 2]
    _, neg, pos = np.random.default_rng(11).multinomial(n, probs, size=400).T
    power = np.mean(exact_mcnemar_p(neg, pos) < 0.05)
    assert power == pytest.approx(0.8, abs=0.1)


def test_mdd_large_n_matches_normal_approximation() -> None:
    n, rate = 1_000_000, 0.1
    approx = (1.959963984540054 + 0.8416212335729143) * np.sqrt(rate / n)
    assert min_detectable_drop(n, rate) == pytest.approx(approx, rel=1e-3)


@pytest.mark.parametrize("n", [0, 1, 3])
def test_mdd_tiny_n_is_total(n: int) -> None:
    assert min_detectable_drop(n, 0.5) == 1.0


# --- summary and edge cases --------------------------------------------------------


def test_summary_of_a_realistic_table() -> None:
    base, cand = vectors(1400, 160, 90, 350)
    s = paired_summary(base, cand)
    assert s["n"] == 2000
    assert s["negative_flips"] == 160 and s["positive_flips"] == 90
    assert s["acc_base"] == 0.78 and s["acc_candidate"] == 0.745
    assert s["delta"] == pytest.approx(-0.035)
    assert s["delta_lo"] < s["delta"] < s["delta_hi"] < 0
    assert s["nfr"] == 0.08 and s["pfr"] == 0.045
    assert s["mcnemar_p"] == pytest.approx(sps.binomtest(160, 250).pvalue)
    assert s["mdd"] == min_detectable_drop(2000, 0.125)
    json.dumps(s)
    assert all(type(v) in (int, float) for v in s.values())


def test_summary_empty() -> None:
    s = paired_summary(np.array([], dtype=int), np.array([], dtype=int))
    assert s["n"] == 0 and s["delta"] == 0.0
    assert (s["delta_lo"], s["delta_hi"]) == (-1.0, 1.0)
    assert (s["acc_base_lo"], s["acc_base_hi"]) == (0.0, 1.0)
    assert s["mcnemar_p"] == 1.0 and s["mdd"] == 1.0
    json.dumps(s)


@pytest.mark.parametrize("cells", [(600, 0, 0, 400), (1000, 0, 0, 0), (0, 0, 0, 1000), (3, 0, 0, 2)])
def test_identical_answers(cells: tuple[int, int, int, int]) -> None:
    s = paired_summary(*vectors(*cells))
    assert s["delta"] == 0.0 and s["negative_flips"] == s["positive_flips"] == 0
    assert s["mcnemar_p"] == 1.0
    assert s["delta_lo"] <= 0.0 <= s["delta_hi"]
    assert s["nfr"] == 0.0 and s["nfr_lo"] == 0.0 and s["nfr_hi"] > 0.0
    assert 0.0 < s["mdd"] <= 1.0


def test_identical_answers_give_a_tight_interval() -> None:
    # With both margins strictly inside (0, 1), phi is near 1 and the interval nearly 0.
    _, lo, hi = paired_delta_ci(*vectors(600, 0, 0, 400))
    assert -0.005 < lo <= 0.0 <= hi < 0.005


@pytest.mark.parametrize(("right", "wrong"), [(1000, 0), (0, 1000), (500, 500), (1, 0)])
def test_all_flipped(right: int, wrong: int) -> None:
    # Every item changes: the base was right exactly where the candidate is wrong.
    base = np.repeat([1, 0], [right, wrong])
    s = paired_summary(base, 1 - base)
    n = right + wrong
    assert s["negative_flips"] == right and s["positive_flips"] == wrong
    assert s["delta"] == pytest.approx((wrong - right) / n)
    assert -1.0 <= s["delta_lo"] <= s["delta"] <= s["delta_hi"] <= 1.0
    assert s["mcnemar_p"] == pytest.approx(mcnemar_exact(right, wrong))
    if right == n and n >= 100:
        assert s["delta_hi"] < -0.99 and s["mcnemar_p"] < 1e-100


def test_accepts_booleans() -> None:
    base, cand = vectors(*REALISTIC[1])
    assert paired_delta_ci(base.astype(bool), cand.astype(bool)) == paired_delta_ci(base, cand)


@pytest.mark.parametrize(
    ("base", "cand"),
    [([1, 0, 1], [1, 0]), ([[1, 0]], [[1, 0]]), ([1, 2], [1, 0]), ([0.5, 1], [1, 1]), ([np.nan, 1], [1, 1])],
)
def test_rejects_malformed_vectors(base: list, cand: list) -> None:
    with pytest.raises(ValueError):
        paired_delta_ci(np.array(base), np.array(cand))


def test_fast_on_100k_items() -> None:
    rng = np.random.default_rng(0)
    base = rng.random(100_000) < 0.7
    cand = np.where(rng.random(100_000) < 0.9, base, ~base)
    s = paired_summary(base, cand)
    assert s["n"] == 100_000
    assert s["delta_hi"] - s["delta_lo"] < 0.01
