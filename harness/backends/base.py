"""The backend contract: the few calls the pipeline needs from an inference engine.

A backend is started once per checkpoint and answers, in bulk:

* ``generate(requests)``: greedy generations with finish reasons and token ids;
* ``loglikelihood(requests)``: summed log-probs of continuations (multiple choice, probes);
* ``apply_chat_template(messages)``: the checkpoint's own chat template, as text;
* ``eot_token_ids`` / ``eot_texts``: the end-of-turn ids it stops on and their text.

Backends never see lm-eval objects; ``harness.lm_adapter.RegressLM`` turns lm-eval
``Instance``s into ``GenRequest``/``LoglikRequest`` lists and back. Backends are
registered by name in ``harness.backends`` with lazy imports.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

from harness.types import Generation, GenRequest, Loglik, LoglikRequest


@runtime_checkable
class Backend(Protocol):
    name: str
    # How many requests to hand over per call when streaming records to the store.
    chunk_size: int

    def generate(self, requests: Sequence[GenRequest]) -> list[Generation]: ...

    def loglikelihood(self, requests: Sequence[LoglikRequest]) -> list[Loglik]: ...

    def apply_chat_template(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True) -> str: ...

    @property
    def eot_token_ids(self) -> tuple[int, ...]: ...

    @property
    def eot_texts(self) -> tuple[str, ...]: ...

    @property
    def tokenizer_name(self) -> str: ...

    def close(self) -> None: ...


def cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, str | None]:
    """Cut ``text`` before the earliest stop string; return (text, stop or None)."""
    best = -1
    hit: str | None = None
    for s in stops:
        if not s:
            continue
        i = text.find(s)
        if i != -1 and (best == -1 or i < best):
            best, hit = i, s
    if hit is None:
        return text, None
    return text[:best], hit


def split_pair(
    encode: Callable[[str], list[int]], context: str, continuation: str, bos_id: int
) -> tuple[list[int], list[int]]:
    """lm-eval's context/continuation split, shared by every backend: trailing spaces of
    the context move to the continuation, and the continuation's tokens are those of the
    whole string after the context's (``bos_id`` stands in for an empty context)."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    ctx = encode(context)
    if not ctx:
        return [bos_id], encode(continuation)
    return ctx, encode(context + continuation)[len(ctx) :]


class TokenizerMixin:
    """What every backend answers from the checkpoint's own tokenizer: its end-of-turn ids
    (``self._eot``) and their text, its chat template, and prompt encoding. Prompts are
    rendered by the chat template, which writes BOS itself, so encoding adds no specials."""

    tokenizer: Any
    checkpoint: str
    _eot: tuple[int, ...]

    @property
    def eot_token_ids(self) -> tuple[int, ...]:
        return self._eot

    @property
    def eot_texts(self) -> tuple[str, ...]:
        return tuple(self.tokenizer.decode([i], skip_special_tokens=False) for i in self._eot)

    @property
    def tokenizer_name(self) -> str:
        return self.checkpoint

    def apply_chat_template(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False).input_ids
