"""Records that flow through the pipeline, all frozen.

suite -> requests -> backend -> records -> compare -> detectors -> gate -> report

Each stage returns new values and never mutates earlier ones:

* ``GenRequest`` / ``LoglikRequest``: what the lm-eval adapter hands a backend.
* ``Generation`` / ``Loglik``: what a backend answers, with what lm-eval throws away
  (full text, generated token ids, finish reason).
* ``Record``: one row per (checkpoint, task, item), written to the store.
* ``ItemPair`` columns (see ``compare.ITEM_COLUMNS``) and ``TaskStats`` for comparisons.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

FinishReason = Literal["eos", "stop", "length"]
FINISH_REASONS: tuple[str, ...] = ("eos", "stop", "length")


@dataclass(frozen=True)
class GenRequest:
    """One greedy generation: a fully templated prompt, its stop strings and token budget."""

    prompt: str
    stop: tuple[str, ...] = ()
    max_tokens: int = 64


@dataclass(frozen=True)
class Generation:
    """A backend's answer to a ``GenRequest``.

    ``text`` is the generated text cut before the first stop string (what lm-eval scores);
    ``finish`` is ``eos`` (an end-of-turn/eos token), ``stop`` (a stop string) or ``length``
    (ran to ``max_tokens``); ``stop_reason`` is the token id or string that stopped it.
    ``token_ids`` are the generated ids (eos excluded) for the token-level detectors.
    """

    text: str
    n_tokens: int
    finish: str
    stop_reason: str | None = None
    token_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.finish not in FINISH_REASONS:
            raise ValueError(f"finish reason must be one of {FINISH_REASONS}, got {self.finish!r}")


@dataclass(frozen=True)
class LoglikRequest:
    """Log-probability of ``continuation`` after ``context`` (both text, context templated)."""

    context: str
    continuation: str


@dataclass(frozen=True)
class Loglik:
    """Sum of log-probs of the continuation's tokens, whether greedy decoding yields it,
    and how many tokens it has (for per-token means)."""

    logprob: float
    is_greedy: bool
    n_tokens: int


@dataclass(frozen=True)
class Record:
    """One (checkpoint, task, item) result, as stored.

    ``item_hash`` is a hash of the item's content (the lm-eval doc), ``prompt_hash`` of the
    exact prompt text the backend saw; compare refuses to pair rows whose hashes differ.
    ``output`` is the raw generation (for multiple choice: the chosen choice), ``answer``
    the extracted answer that lm-eval's filters kept, ``score`` the task's primary metric.
    ``finish``/``n_tokens``/``token_ids`` are empty for multiple-choice items.
    """

    task: str
    item_id: str
    item_hash: str
    prompt_hash: str
    prompt: str
    target: str
    output: str
    answer: str
    score: float
    metric: str
    kind: str  # "generate_until" | "multiple_choice"
    finish: str | None = None
    stop_reason: str | None = None
    n_tokens: int = 0
    token_ids: tuple[int, ...] = ()
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def correct(self) -> bool:
        return self.score >= 0.5

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["token_ids"] = list(self.token_ids)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Record:
        d = dict(d)
        d["token_ids"] = tuple(d.get("token_ids") or ())
        d["metrics"] = dict(d.get("metrics") or {})
        return cls(**d)


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint as the report names it: its path and content fingerprint."""

    path: str
    fingerprint: str
