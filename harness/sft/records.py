"""The key-token tool's records: an SFT example, its rendering, its scores, the whole audit."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from harness.sft.rule import TokenRule, labels_of


@dataclass(frozen=True)
class Example:
    """One line of the SFT file: its line number and chat messages."""

    line: int
    messages: tuple[Mapping[str, Any], ...]


@dataclass(frozen=True)
class Rendered:
    """An example rendered with the base's template: token ids and which are assistant tokens."""

    line: int
    ids: tuple[int, ...]
    assistant: tuple[bool, ...]


@dataclass(frozen=True)
class TokenScore:
    """One assistant token under the base."""

    pos: int
    id: int
    text: str
    prob: float
    rank: int
    greedy: bool
    key: bool


@dataclass(frozen=True)
class Scored:
    """An example scored under the base."""

    line: int
    ids: tuple[int, ...]
    tokens: tuple[TokenScore, ...]  # the assistant tokens
    prompt_tokens: int
    prompt_nll: float  # summed over the prompt tokens after the first

    @property
    def key_tokens(self) -> int:
        return sum(t.key for t in self.tokens)

    @property
    def key_share(self) -> float:
        return self.key_tokens / len(self.tokens) if self.tokens else 0.0

    @property
    def log_ppl(self) -> float:
        n = self.prompt_tokens - 1
        return self.prompt_nll / n if n > 0 else float("nan")

    def labels(self) -> list[int]:
        key = {t.pos for t in self.tokens if t.key}
        return labels_of(self.ids, [i in key for i in range(len(self.ids))])


@dataclass(frozen=True)
class Audit:
    """The whole file: scored examples, the outlier threshold and which examples are kept."""

    base: str
    data: str
    rule: TokenRule
    examples: tuple[Scored, ...]
    threshold: float | None  # on log perplexity

    def outlier(self, s: Scored) -> bool:
        return self.threshold is not None and math.isfinite(s.log_ppl) and s.log_ppl > self.threshold

    def kept(self, s: Scored) -> bool:
        return not self.outlier(s) and s.key_tokens > 0

    def summary(self) -> dict[str, Any]:
        ex = self.examples
        n_asst = sum(len(s.tokens) for s in ex)
        n_key = sum(s.key_tokens for s in ex)
        outliers = [s.line for s in ex if self.outlier(s)]
        no_key = [s.line for s in ex if not self.outlier(s) and s.key_tokens == 0]
        return {
            "base": self.base,
            "data": self.data,
            "rule": {**asdict(self.rule), "text": self.rule.describe()},
            "examples": len(ex),
            "assistant_tokens": n_asst,
            "key_tokens": n_key,
            "key_share": n_key / n_asst if n_asst else 0.0,
            "greedy_matched": sum(t.greedy for s in ex for t in s.tokens),
            "outlier_log_ppl_threshold": self.threshold,
            "outlier_ppl_threshold": math.exp(self.threshold) if self.threshold is not None else None,
            "outliers_dropped": len(outliers),
            "outlier_lines": outliers,
            "no_key_dropped": len(no_key),
            "kept": sum(self.kept(s) for s in ex),
        }
