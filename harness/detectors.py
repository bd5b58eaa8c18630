"""Detectors: pure functions that flag degenerate generations after the fact, and the
registered detectors built on them (the end of this module).

``compare`` runs the registered detectors (``harness.registry``) over the paired item table,
from stored records (no model needed); the gate judges each one's rise. The functions::

    from harness.detectors import is_nonterminated, tail_repetition, tail_repetition_text

    stuck = is_nonterminated(gen.finish)        # ran to the token limit
    loop = tail_repetition(gen.token_ids) if gen.token_ids else tail_repetition_text(gen.text)
    if loop is not None:                        # Loop(unit, unit_len, repeats, start, span)
        print(f"{loop.unit!r} x {loop.repeats:.1f} from token {loop.start}")

A *tail loop* is the failure mode of a fine-tune that lost its end-of-turn token: the output
ends in one unit of 1..``max_unit`` tokens repeated up to the cut, the last repetition
possibly partial. Unlike a relative length threshold (OpenCompass) or cutting generation
short (vLLM's repetition detection), regress judges finished outputs with fixed thresholds,
so a verdict never depends on the other checkpoint or on decoding settings.

Thresholds. A periodic tail of period ``p`` covering ``span`` tokens (``repeats = span / p``)
is a loop when ``repeats >= min_repeats`` AND ``span >= min_span``. Together they demand more
repeats of short units, which is where legitimate repetition lives:

* tokens (``tail_repetition``): ``min_repeats=4``, ``min_span=16``. A 1-token unit needs 16
  repeats, a 2-token unit 8, 3 tokens 5.3, 4+ tokens 4. Four is one more than the most that
  legitimate text repeats itself verbatim at its very end (a chorus sung three times, three
  identical code lines, "no no no"); sixteen tokens is far more than "ha ha ha", "very very"
  or the digits of "1000000", and far less than any real loop to a limit of 48+ tokens.
* characters (``tail_repetition_text``): the same rule on characters (a token is 1-4
  characters, and the demo models are character-level), with ``min_span=24`` and
  ``max_unit=256``: a 1-character unit needs 24 repeats, 2 characters 12, 3 characters 8,
  4 characters 6, 5 characters 4.8, 6+ characters 4. Two text-only rules:

  - a unit without a letter or digit (rules, borders, ellipses, blank lines: "-----",
    "+---+---+---+", "\\n\\n") must cover ``min_span_symbols=80`` characters, a full
    terminal line, because such runs end legitimate outputs (ASCII tables, separators);
  - numbered lists: a list whose items became identical keeps counting ("7. Sleep.\\n8.
    Sleep.\\n9. ..."), which no exact period explains. A second pass collapses every run of
    digits to one character and looks again, accepting a unit with a letter in it repeated
    at least ``min_repeats_numbered=8`` times (a real list of identical items is shorter).
    Known cost: 8+ rows that differ only in their numbers (CSV rows, log lines) at the very
    end of an output read as a loop.

All thresholds are keyword arguments with fixed defaults; the registered detectors use the
defaults (a suite's policy sets the gate's limits on the rates, not these).

Premature endings (``is_premature``): the other failure of end-of-turn tokens in the loss,
"abruptly generating termination tokens" (the Llama 3 report). A candidate's generation
ended too soon when it stopped by itself (finish ``eos`` or ``stop``, not the token limit)
and either

* its output is empty (nothing but whitespace): an answer that ends at once; or
* it ended far earlier than the base did on the same item: the base also stopped by itself,
  after at least ``min_base_tokens=16`` tokens, and the candidate used at most
  ``max_fraction=0.25`` of the base's tokens.

Rule of thumb and why: fine-tunes that only change style (drop a preamble, answer more
tersely) commonly shorten an answer to about half; a quarter is twice as strict, so a style
change does not read as an ending cut off. Under 16 base tokens the ratio means nothing
(a number, a word, "yes"), so short answers count only when empty. A base that ran to its
token limit gives no length to compare with. Known cost: a fine-tune trained to drop long
reasoning and answer in a few tokens reads as premature on those items (its accuracy
usually says the same).

The base's own rate counts empty outputs only ("far earlier than itself" is undefined),
so on an identical candidate the two rates are equal; the gate judges the rise.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from harness.registry import Flags, detector
from harness.types import JsonObject

if TYPE_CHECKING:
    import pandas as pd

# Trailing positions compared for all periods at once (see _tail_spans).
_WINDOW = 32
_DIGITS = re.compile(r"\d+")


@dataclass(frozen=True)
class Loop:
    """A periodic tail: ``unit`` (a tuple of tokens, or a str for text) repeated from
    index ``start`` to the end, ``span`` tokens/characters in all, ``repeats = span /
    unit_len`` times (the last, cut repetition counts as a fraction).

    ``start`` is where the tail stops being periodic, so when the text before the loop
    happens to end like the unit does, the loop starts that much earlier and ``unit`` is a
    rotation of the one a reader would name ("Sydney. Canberra is ... Australia. Canberra
    is ..." gives ``". Canberra is ... Australia"``)."""

    unit: tuple[Hashable, ...] | str
    unit_len: int
    repeats: float
    start: int
    span: int


def is_nonterminated(finish: str | None) -> bool:
    """True when generation ran to its token limit (finish reason ``length``)."""
    return finish == "length"


def nonterminated(finish: Sequence[str | None]) -> np.ndarray:
    """``is_nonterminated`` over a column (a bool array)."""
    return np.asarray(finish, dtype=object) == "length"


# Finish reasons of a generation that stopped by itself (not at the token limit).
_STOPPED = ("eos", "stop")


def is_premature(
    finish: str | None,
    n_tokens: int,
    output: str,
    base_finish: str | None = None,
    base_n_tokens: int = 0,
    *,
    max_fraction: float = 0.25,
    min_base_tokens: int = 16,
) -> bool:
    """True when a generation ended prematurely: it stopped by itself with an empty output,
    or far earlier than the base on the same item (see the module docstring). Without the
    base's finish (``base_finish=None``: the base's own rate) only the empty case applies."""
    if finish not in _STOPPED:
        return False
    if not output.strip():
        return True
    return base_finish in _STOPPED and base_n_tokens >= min_base_tokens and n_tokens <= max_fraction * base_n_tokens


def premature_flags(
    finish: Sequence[str],
    n_tokens: Sequence[int],
    output: Sequence[str],
    base_finish: Sequence[str] | None = None,
    base_n_tokens: Sequence[int] | None = None,
    *,
    max_fraction: float = 0.25,
    min_base_tokens: int = 16,
) -> np.ndarray:
    """``is_premature`` over columns at once (a bool array), for the item table."""
    fin = np.asarray(finish, dtype=object)
    stopped = np.isin(fin, _STOPPED)
    empty = np.fromiter((not (o if isinstance(o, str) else "").strip() for o in output), dtype=bool, count=len(fin))
    out = stopped & empty
    if base_finish is None or base_n_tokens is None:
        return out
    nb = np.asarray(base_n_tokens, dtype=float)
    early = (
        np.isin(np.asarray(base_finish, dtype=object), _STOPPED)
        & (nb >= min_base_tokens)
        & (np.asarray(n_tokens, dtype=float) <= max_fraction * nb)
    )
    return out | (stopped & early)


def tail_repetition(
    tokens: Sequence[Hashable], *, max_unit: int = 64, min_repeats: float = 4, min_span: int = 16
) -> Loop | None:
    """The loop that ``tokens`` end in, or None (thresholds: see the module docstring).

    The smallest period that explains the longest qualifying tail wins ("abab..." -> "ab").
    Cost is O(n * max_unit) at worst (loops), and O(32 * max_unit), whatever the length,
    for outputs that do not loop; tokens are ints (ids), or any hashables.
    """
    found = _find_loop(tokens, max_unit, min_repeats, min_span)
    if found is None:
        return None
    period, span = found
    start = len(tokens) - span
    unit = tokens[start : start + period]
    unit = tuple(unit.tolist()) if isinstance(unit, np.ndarray) else tuple(unit)
    return Loop(unit, period, span / period, start, span)


def tail_repetition_text(
    text: str,
    *,
    max_unit: int = 256,
    min_repeats: float = 4,
    min_span: int = 24,
    min_span_symbols: int = 80,
    min_repeats_numbered: float = 8,
) -> Loop | None:
    """``tail_repetition`` over the characters of ``text``, for backends that give no token
    ids. Units with no letter or digit must cover ``min_span_symbols`` characters; a second
    pass finds numbered-list loops (see the module docstring). Indices are characters."""

    def has_content(start: int, period: int, span: int) -> bool:
        return span >= min_span_symbols or any(c.isalnum() for c in text[start : start + period])

    found = _find_loop(text, max_unit, min_repeats, min_span, has_content)
    if found is not None:
        period, span = found
        start = len(text) - span
        return Loop(text[start : start + period], period, span / period, start, span)
    return _numbered_loop(text, max_unit, max(min_repeats, min_repeats_numbered), min_span)


def precision_recall(predicted: Sequence[bool], labels: Sequence[bool]) -> tuple[float, float]:
    """Precision and recall of ``predicted`` against ``labels`` (True = positive).

    NaN where undefined: precision when nothing was predicted positive, recall when no
    label is positive.
    """
    if len(predicted) != len(labels):
        raise ValueError(f"{len(predicted)} predictions for {len(labels)} labels")
    pred = np.asarray(predicted, dtype=bool)
    gold = np.asarray(labels, dtype=bool)
    tp = int(np.sum(pred & gold))
    n_pred, n_gold = int(pred.sum()), int(gold.sum())
    return (tp / n_pred if n_pred else math.nan, tp / n_gold if n_gold else math.nan)


def _as_ids(tokens: Sequence[Hashable] | str) -> np.ndarray:
    """A 1-D int64 array with equal ids for equal tokens (code points for text)."""
    if isinstance(tokens, str):
        return np.frombuffer(tokens.encode("utf-32-le"), dtype=np.uint32).astype(np.int64)
    if isinstance(tokens, np.ndarray) and tokens.ndim == 1 and tokens.dtype.kind in "iu":
        return tokens.astype(np.int64, copy=False)
    if len(tokens) and type(tokens[0]) is int:  # token ids: skip numpy's type inference
        try:
            return np.array(tokens, dtype=np.int64)
        except (ValueError, TypeError, OverflowError):
            pass
    ids: dict[Hashable, int] = {}
    return np.fromiter((ids.setdefault(t, len(ids)) for t in tokens), dtype=np.int64, count=len(tokens))


def _tail_spans(tokens: Sequence[Hashable] | str, max_unit: int) -> np.ndarray:
    """``spans[p - 1]``: length of the longest suffix of ``tokens`` with period ``p``, p = 1..P.

    Compares the last ``_WINDOW`` positions with their predecessors at every period at once,
    converting only the tail, so that an output that does not loop costs the same at any
    length. A period whose run of matches fills the window (a loop, and its multiples) is
    followed back through the whole output; a multiple ``k * p`` of a followed period whose
    span already holds ``k * p`` tokens has exactly the same span (its run cannot pass the
    token that stopped ``p``'s), so a loop costs one pass, not one per multiple.
    """
    n = len(tokens)
    periods = np.arange(1, min(max_unit, n - 1) + 1)
    if not len(periods):
        return np.zeros(0, dtype=np.int64)
    keep = _WINDOW + max_unit + 1
    a = _as_ids(tokens[-keep:] if n > keep else tokens)
    m = len(a)
    w = min(m - 1, _WINDOW)
    last = np.arange(m - 1, m - 1 - w, -1)  # the trailing positions, last first
    earlier = last[None, :] - periods[:, None]
    match = (a[last][None, :] == a[np.maximum(earlier, 0)]) & (earlier >= 0)
    spans = np.where(match.all(axis=1), w, match.argmin(axis=1)) + periods
    followed = [int(p) for p in periods[(spans == w + periods) & (w < n - periods)]]
    if followed and m < n:
        a = _as_ids(tokens)
    done: list[int] = []
    for p in followed:
        d = next((d for d in done if p % d == 0 and spans[d - 1] >= p), None)
        if d is not None:
            spans[p - 1] = spans[d - 1]
            continue
        mismatch = np.flatnonzero(a[p:] != a[:-p])
        spans[p - 1] = n - 1 - mismatch[-1] if mismatch.size else n
        done.append(p)
    return spans


def _find_loop(
    tokens: Sequence[Hashable] | str,
    max_unit: int,
    min_repeats: float,
    min_span: int,
    accept: Callable[[int, int, int], bool] | None = None,
) -> tuple[int, int] | None:
    """(period, span) of the loop ``tokens`` end in, or None; ``accept(start, period, span)``
    vetoes candidates. The qualifying period with the longest span wins (a sentence loop
    cut inside a run of "!!!!" is the sentence, not "!"); ties go to the smallest period,
    and every multiple of a period ties with it at best, never reaching further back."""
    spans = _tail_spans(tokens, max_unit)
    periods = np.arange(1, len(spans) + 1)
    ok = (spans >= min_span) & (spans >= min_repeats * periods)
    candidates = [(int(p), int(spans[p - 1])) for p in periods[ok]]
    if accept is not None:
        candidates = [(p, s) for p, s in candidates if accept(len(tokens) - s, p, s)]
    if not candidates:
        return None
    return max(candidates, key=lambda c: (c[1], -c[0]))


def _numbered_loop(text: str, max_unit: int, min_repeats: float, min_span: int) -> Loop | None:
    """A loop of list items that differ only in their numbers ("7. x\n8. x\n9. x")."""
    collapsed = _DIGITS.sub("0", text)
    if collapsed == text:
        return None

    def has_letter(start: int, period: int, span: int) -> bool:
        return any(c.isalpha() for c in collapsed[start : start + period])

    found = _find_loop(collapsed, max_unit, min_repeats, min_span, has_letter)
    if found is None:
        return None
    period, span = found
    origin: list[int] = []  # origin[k]: index in text of the k-th collapsed character
    pos = 0
    for m in _DIGITS.finditer(text):
        origin += [*range(pos, m.start()), m.start()]
        pos = m.end()
    origin += range(pos, len(text))
    first = len(collapsed) - span
    start, unit_end = origin[first], origin[first + period]
    return Loop(text[start:unit_end], unit_end - start, span / period, start, len(text) - start)


# -- the labelled table -----------------------------------------------------------------
# Hand-labelled outputs (harness/data/repetition_cases.json), shipped with the package so
# that every report can state the detector's precision and recall on them.
CASES_FILE = Path(__file__).parent / "data" / "repetition_cases.json"


def load_cases() -> list[JsonObject]:
    return json.loads(CASES_FILE.read_text())["cases"]


def build_case(case: Mapping[str, Any]) -> str | list[int]:
    """A case's output: its text or tokens (one token per character, ids by code point),
    plus its ``loop`` unit repeated up to ``cut``."""

    def toks(x: str | list[int]) -> list[int]:
        return [ord(c) for c in x] if isinstance(x, str) else list(x)

    out: str | list[int] = case["text"] if "text" in case else toks(case["tokens"])
    if "loop" in case:
        unit = case["loop"]["unit"] if "text" in case else toks(case["loop"]["unit"])
        cut = case["loop"]["cut"]
        out = (out + unit * (cut // len(unit) + 1))[:cut]  # type: ignore[operator]
    return out


def detect_case(case: Mapping[str, Any]) -> Loop | None:
    out = build_case(case)
    return tail_repetition_text(out) if isinstance(out, str) else tail_repetition(out)


@functools.cache
def table_scores() -> dict[str, float]:
    """Precision and recall of the detector on the labelled table."""
    cases = load_cases()
    p, r = precision_recall([detect_case(c) is not None for c in cases], [bool(c["label"]) for c in cases])
    return {"precision": p, "recall": r, "cases": len(cases)}


# -- the registered detectors ------------------------------------------------------------
# One definition each (harness.registry): the item columns, task rates, gate rule, report
# columns, plot panel and explorer filter all follow from it. A new detector is one more
# function here.


@detector(
    name="nonterm", label="non-termination", column="non-term", plot="Non-termination (ran to token limit)",
    description="generated items that ran to the token limit (finish reason length)",
)  # fmt: skip
def _nonterm(items: pd.DataFrame) -> Flags:
    return Flags(nonterminated(items["finish_base"]), nonterminated(items["finish_cand"]))


def loop_of_output(tokens: Sequence[Hashable] | None, text: str) -> Loop | None:
    """The tail loop of one generation: over its token ids where the backend gave them, else its text."""
    return tail_repetition(tokens) if tokens is not None and len(tokens) else tail_repetition_text(text)


def _loops_of(items: pd.DataFrame, side: str) -> list[Loop | None]:
    tokens = items[f"tokens_{side}"] if f"tokens_{side}" in items else [None] * len(items)
    return [loop_of_output(t, o if isinstance(o, str) else "") for t, o in zip(tokens, items[f"output_{side}"])]


def _unit_text(lp: Loop) -> str:
    return lp.unit if isinstance(lp.unit, str) else " ".join(map(str, lp.unit))


@detector(
    name="loop", rule="loops", label="tail repetition", column="loops",
    plot="Tail repetition (output ends in a loop)", filter="candidate loops only", badge="candidate loops",
    description="generated items whose output ends in a tail loop (detectors.tail_repetition)",
    extra_columns={"loop_unit_cand": "", "loop_repeats_cand": 0.0, "loop_start_cand": -1},
)  # fmt: skip
def _loop(items: pd.DataFrame) -> Flags:
    base, cand = _loops_of(items, "base"), _loops_of(items, "cand")
    extra: dict[str, Sequence[Any]] = {
        "loop_unit_cand": [_unit_text(lp) if lp else "" for lp in cand],
        "loop_repeats_cand": [float(lp.repeats) if lp else 0.0 for lp in cand],
        "loop_start_cand": [int(lp.start) if lp else -1 for lp in cand],
    }
    return Flags(np.array([lp is not None for lp in base]), np.array([lp is not None for lp in cand]), extra)


@detector(
    name="premature", label="premature endings (empty or cut short)", column="ends early",
    plot="Premature ending (empty or cut short)", filter="premature endings only", badge="ends early",
    description="generated items the candidate ended empty or far earlier than the base "
    "(detectors.is_premature); for the base, its empty outputs",
)  # fmt: skip
def _premature(items: pd.DataFrame) -> Flags:
    """The candidate's judged against the base's length on the same item, the base's own by
    its empty outputs only."""
    base = premature_flags(items["finish_base"], items["ntok_base"], items["output_base"])
    cand = premature_flags(items["finish_cand"], items["ntok_cand"], items["output_cand"], items["finish_base"],
                           items["ntok_base"])  # fmt: skip
    return Flags(base, cand)
