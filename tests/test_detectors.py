"""Tests of harness.detectors: a hand-labelled table of outputs (harness/data/repetition_cases.json)
checked case by case and scored for precision and recall, exact Loop fields on small cases,
threshold boundaries, and a seeded comparison of the vectorised search with a brute force one.
"""

from __future__ import annotations

import math
import random
import time

import numpy as np
import pytest

from harness.detectors import (
    Loop,
    detect_case,
    is_nonterminated,
    is_premature,
    load_cases,
    precision_recall,
    premature_flags,
    tail_repetition,
    tail_repetition_text,
)

CASES = load_cases()


def _detect(case: dict) -> Loop | None:
    return detect_case(case)


def test_table_is_balanced_and_mixed() -> None:
    labels = [c["label"] for c in CASES]
    assert len(CASES) >= 40 and len({c["id"] for c in CASES}) == len(CASES)
    assert 0.35 <= sum(labels) / len(labels) <= 0.65
    assert sum("tokens" in c for c in CASES) >= 15 and sum("text" in c for c in CASES) >= 15


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_case(case: dict) -> None:
    loop = _detect(case)
    assert (loop is not None) == case["label"], f"{case['id']} ({case['note']}): got {loop}"


def test_precision_recall_over_table() -> None:
    predicted = [_detect(c) is not None for c in CASES]
    labels = [c["label"] for c in CASES]
    misses = [c["id"] for c, p in zip(CASES, predicted, strict=True) if p != c["label"]]
    precision, recall = precision_recall(predicted, labels)
    print(f"\ntail repetition over {len(CASES)} cases: precision {precision:.3f}, recall {recall:.3f}, misses {misses}")
    assert precision >= 0.95 and recall >= 0.95, misses


def test_loop_fields_exact() -> None:
    assert tail_repetition(list("xy" + "ab" * 10)) == Loop(("a", "b"), 2, 10.0, 2, 20)
    text = "The answer is 46." + " 46" * 10
    loop = tail_repetition_text(text)
    assert loop == Loop(" 46", 3, 10.0, len(text) - 30, 30)


def test_partial_last_unit() -> None:
    loop = tail_repetition([9] + [1, 2, 3] * 6 + [1, 2])
    assert loop is not None
    assert (loop.unit, loop.unit_len, loop.start, loop.span) == ((1, 2, 3), 3, 1, 20)
    assert loop.repeats == pytest.approx(20 / 3)
    loop = tail_repetition_text("dcba" * 11 + "dcb")
    assert loop is not None and (loop.unit, loop.start, loop.repeats) == ("dcba", 0, 11.75)


def test_smallest_period_wins() -> None:
    assert tail_repetition_text("ab" * 40).unit == "ab"
    assert tail_repetition([5] * 40).unit == (5,)
    assert tail_repetition([1, 2, 1, 3] * 10).unit == (1, 2, 1, 3)
    assert tail_repetition_text("xyzxyz" * 10 + "xy").unit == "xyz"


def test_longest_loop_beats_a_short_run_inside_it() -> None:
    # A sentence loop cut inside its own "!!!!" run: the loop is the sentence, not "!".
    unit = [5, 6, 7, 8] + [0] * 20
    loop = tail_repetition((unit * 10)[:-8])
    assert loop is not None and loop.unit == tuple(unit) and loop.start == 0


def test_threshold_boundaries() -> None:
    assert tail_repetition([3, 4] + [7] * 16) is not None
    assert tail_repetition([3, 4] + [7] * 15) is None
    assert tail_repetition([9] + [1, 2] * 8) is not None
    assert tail_repetition([9] + [1, 2] * 7 + [1]) is None
    assert tail_repetition([9] + [1, 2, 3, 4, 5] * 4) is not None  # 4 repeats, 20 tokens
    assert tail_repetition([9] + [1, 2, 3, 4, 5] * 3 + [1, 2, 3, 4]) is None  # 3.8 repeats
    assert tail_repetition_text("x" + "a" * 24) is not None
    assert tail_repetition_text("x" + "a" * 23) is None
    assert tail_repetition_text("x" + "-" * 79) is None  # no letter or digit: needs 80
    assert tail_repetition_text("x" + "-" * 80) is not None
    assert tail_repetition([9] + [1, 2] * 5, min_repeats=2, min_span=4) is not None


def test_max_unit_bounds_the_period() -> None:
    unit = list(range(100, 165))  # 65 tokens
    assert tail_repetition(unit * 5) is None
    loop = tail_repetition(unit * 5, max_unit=65)
    assert loop is not None and loop.unit_len == 65 and loop.repeats == 5.0


def test_long_loops_are_followed_past_the_window() -> None:
    rng = random.Random(0)
    head = [rng.randrange(1000, 2000) for _ in range(1000)]
    loop = tail_repetition(head + [1, 2] * 1000)
    assert loop is not None and (loop.start, loop.span, loop.repeats) == (1000, 2000, 1000.0)
    loop = tail_repetition([3, 4] * 1500)
    assert loop is not None and (loop.start, loop.span) == (0, 3000)


def test_numbered_list_loop_maps_back_to_the_text() -> None:
    text = "Plan:\n1. Wake up.\n" + "".join(f"{i}. Drink water.\n" for i in range(2, 31)) + "31. Dri"
    loop = tail_repetition_text(text)
    assert loop is not None and loop.repeats > 25
    assert "Drink water" in loop.unit and text[loop.start :].startswith(loop.unit)
    assert loop.start + loop.span == len(text) and loop.start <= text.index("2. Drink")


def test_inputs_of_any_kind() -> None:
    words = "I think that".split() + ["so", "on", "and"] * 8
    assert tail_repetition(words).unit == ("so", "on", "and")
    arr = np.array([4, 5] + [8, 9] * 20, dtype=np.int32)
    loop = tail_repetition(arr)
    assert loop is not None and loop.unit == (8, 9) and type(loop.unit[0]) is int
    assert tail_repetition([]) is None and tail_repetition([1]) is None
    assert tail_repetition_text("") is None and tail_repetition_text("a") is None
    assert tail_repetition([-1, -2] * 20) is not None


def test_matches_brute_force_search() -> None:
    """With thresholds at 1 every period qualifies: the answer must be the longest periodic
    suffix, smallest period on ties, as a direct search finds it."""

    def brute(a: list[int], max_unit: int) -> tuple[int, int] | None:
        best = None
        for p in range(1, min(max_unit, len(a) - 1) + 1):
            i = len(a) - 1
            while i - p >= 0 and a[i] == a[i - p]:
                i -= 1
            span = len(a) - 1 - i + p
            if best is None or span > best[1]:
                best = (p, span)
        return best

    rng = random.Random(1234)
    for _ in range(300):
        head = [rng.randrange(3) for _ in range(rng.randrange(0, 400))]
        unit = [rng.randrange(3) for _ in range(rng.randrange(1, 12))]
        a = head + unit * rng.randrange(0, 60)
        a = a[: len(a) - rng.randrange(0, len(unit))]
        found = tail_repetition(a, max_unit=16, min_repeats=1, min_span=1)
        want = brute(a, 16)
        assert (None if found is None else (found.unit_len, found.span)) == want, a


def test_fast_enough_for_100k_outputs() -> None:
    rng = np.random.default_rng(0)
    outputs = [rng.integers(0, 32000, 1000).tolist() for _ in range(500)]
    t0 = time.perf_counter()
    for out in outputs:
        tail_repetition(out)
    per_output = (time.perf_counter() - t0) / len(outputs)
    print(f"\ntail_repetition: {per_output * 1e6:.0f} us per 1000-token output")
    assert per_output < 1e-3  # 100k outputs in under 100 s even on a slow CI core


def test_is_nonterminated() -> None:
    assert is_nonterminated("length")
    assert not any(is_nonterminated(f) for f in ("eos", "stop", None, ""))


def test_precision_recall() -> None:
    assert precision_recall([True, True, False, False], [True, False, True, False]) == (0.5, 0.5)
    assert precision_recall([True, False], [True, False]) == (1.0, 1.0)
    p, r = precision_recall([False, False], [False, False])
    assert math.isnan(p) and math.isnan(r)
    with pytest.raises(ValueError):
        precision_recall([True], [True, False])


# -- premature endings ------------------------------------------------------------------
# (finish, n_tokens, output, base_finish, base_n_tokens, expected, why)
PREMATURE_CASES = [
    ("eos", 0, "", "eos", 5, True, "empty answer, short base"),
    ("stop", 1, "  \n", "eos", 40, True, "whitespace only is empty"),
    ("eos", 0, "", "length", 64, True, "empty even when the base ran to its limit"),
    ("eos", 0, "", None, 0, True, "the base's own rate: empty"),
    ("eos", 3, "abc", None, 0, False, "the base's own rate: never 'earlier than itself'"),
    ("length", 64, "", "eos", 40, False, "ran to the limit: non-termination, not premature"),
    ("eos", 10, "x" * 10, "eos", 40, True, "a quarter of the base's tokens"),
    ("eos", 11, "x" * 11, "eos", 40, False, "just over a quarter"),
    ("eos", 4, "x" * 4, "eos", 16, True, "base at the 16-token minimum"),
    ("eos", 3, "x" * 3, "eos", 15, False, "base under 16 tokens: ratio not judged"),
    ("eos", 10, "x" * 10, "length", 200, False, "base ran to its limit: no length to compare"),
    ("stop", 10, "x" * 10, "stop", 100, True, "stop strings count as stopping by itself"),
    ("eos", 20, "x" * 20, "eos", 40, False, "half the base: a style change"),
    ("eos", 40, "x" * 40, "eos", 40, False, "same length"),
    (None, 0, "", "eos", 40, False, "multiple choice: no finish reason"),
]


@pytest.mark.parametrize("case", PREMATURE_CASES, ids=[c[-1] for c in PREMATURE_CASES])
def test_is_premature_table(case: tuple) -> None:
    finish, n, out, bfin, bn, want, why = case
    assert is_premature(finish, n, out, bfin, bn) is want, why


def test_premature_flags_match_the_scalar_rule() -> None:
    rows = [c for c in PREMATURE_CASES if c[3] is not None]
    flags = premature_flags([c[0] for c in rows], [c[1] for c in rows], [c[2] for c in rows],
                            [c[3] for c in rows], [c[4] for c in rows])  # fmt: skip
    assert flags.tolist() == [c[5] for c in rows]
    own = premature_flags([c[0] for c in PREMATURE_CASES], [0] * len(PREMATURE_CASES),
                          [c[2] for c in PREMATURE_CASES])  # fmt: skip
    assert own.tolist() == [is_premature(c[0], c[1], c[2]) for c in PREMATURE_CASES]
    assert is_premature("eos", 2, "ab", "eos", 40, max_fraction=0.01) is False
    assert is_premature("eos", 2, "ab", "eos", 10, min_base_tokens=8) is True
