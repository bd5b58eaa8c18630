"""The key-token rule and the prompt-outlier rule, as pure functions (no model, no files).

An assistant token is *key* when the base would not already produce it (``is_key``); an
example's prompt is an outlier when its log perplexity is above Q3 + k * IQR of the file's
(``outlier_threshold``). ``labels_of`` turns the key flags into causal-LM labels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from harness.config import check, option

IGNORE = -100  # the label transformers' and TRL's losses skip


@dataclass(frozen=True)
class TokenRule:
    """What makes a token key and a prompt an outlier; its fields are ``regress tokens``' flags."""

    min_prob: float = option(
        0.0,
        at_least=0,
        at_most=1,
        help="a token the base produces greedily is still key below this probability (default 0: off)",
    )
    outlier_k: float = option(
        3.0, above=0, help="a prompt is an outlier above Q3 + K x IQR of the log prompt perplexities (default 3)"
    )  # fmt: skip

    def __post_init__(self) -> None:
        check(self)

    def describe(self) -> str:
        key = "the base's argmax is another token"
        if self.min_prob > 0:
            key += f", or the base gives it probability below {self.min_prob:g}"
        return (
            f"an assistant token is key when {key}; prompt and template tokens are never key. "
            f"A prompt is an outlier when its log perplexity under the base is above "
            f"Q3 + {self.outlier_k:g} x IQR of the file's log prompt perplexities."
        )


def is_key(greedy: bool, prob: float, min_prob: float = 0.0) -> bool:
    """The base would not already produce this token: not its argmax, or below ``min_prob``."""
    return (not greedy) or prob < min_prob


def quartiles(values: Sequence[float]) -> tuple[float, float]:
    """Q1 and Q3 by linear interpolation between order statistics (numpy's default)."""
    xs = sorted(values)

    def q(p: float) -> float:
        pos = p * (len(xs) - 1)
        lo = math.floor(pos)
        hi = min(lo + 1, len(xs) - 1)
        return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)

    return q(0.25), q(0.75)


def outlier_threshold(log_ppls: Sequence[float], k: float) -> float | None:
    """Q3 + k * IQR of the log perplexities; None with fewer than 4 (no quartiles to speak of)."""
    finite = [x for x in log_ppls if math.isfinite(x)]
    if len(finite) < 4:
        return None
    q1, q3 = quartiles(finite)
    return q3 + k * (q3 - q1)


def labels_of(ids: Sequence[int], key: Sequence[bool]) -> list[int]:
    """Causal-LM labels: the token where it is key, -100 elsewhere (transformers shifts them)."""
    return [t if k else IGNORE for t, k in zip(ids, key)]
