"""Rendering an example with the base's chat template and marking its assistant tokens.

An assistant turn is the text the template adds for the turn, up to and including the first
end-of-turn token (the checkpoint's stop ids or the template's turn end), so ChatML's newline
after ``<|im_end|>`` is not trained on.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from harness.errors import RegressError
from harness.sft.records import Example, Rendered


def turn_spans(prefixes: Sequence[tuple[str, str]], full: str) -> list[tuple[int, int]]:
    """Character spans of the assistant turns in ``full``, from each turn's (text before it
    with the generation prompt, text up to and including it): the turn is what lies between.
    Both must be prefixes of ``full``, or the template renders a turn differently once
    later turns follow and no span can be trusted (ValueError)."""
    spans = []
    for before, upto in prefixes:
        if not (full.startswith(before) and full.startswith(upto) and len(upto) >= len(before)):
            raise ValueError("the chat template renders earlier turns differently once a later turn follows")
        spans.append((len(before), len(upto)))
    return spans


def assistant_mask(
    offsets: Sequence[tuple[int, int]], ids: Sequence[int], spans: Sequence[tuple[int, int]], eot_ids: Iterable[int]
) -> list[bool]:
    """Which tokens belong to an assistant turn: those that start inside a span, up to and
    including the span's first end-of-turn token (what follows it, e.g. ChatML's newline, is
    template text the model never generates)."""
    eot = set(eot_ids)
    mask = [False] * len(ids)
    for start, end in spans:
        for i, (a, _) in enumerate(offsets):
            if start <= a < end:
                mask[i] = True
                if ids[i] in eot:
                    break
    return mask


def eot_ids(ckpt: Any) -> set[int]:
    ids = set(ckpt.eot.stop_ids)
    if ckpt.eot.template_turn_end_id is not None:
        ids.add(ckpt.eot.template_turn_end_id)
    return ids


def _template(tok: Any, msgs: Sequence[Mapping[str, Any]], gen: bool) -> str:
    text = tok.apply_chat_template(list(msgs), tokenize=False, add_generation_prompt=gen)
    assert isinstance(text, str)  # tokenize=False
    return text


def render(tok: Any, ex: Example, eot_ids: Iterable[int], source: str) -> Rendered:
    """``ex`` rendered with the tokenizer's chat template; its assistant tokens marked."""
    msgs = ex.messages
    try:
        full = _template(tok, msgs, False)
        prefixes = [
            (_template(tok, msgs[:i], True), _template(tok, msgs[: i + 1], False))
            for i, m in enumerate(msgs)
            if m["role"] == "assistant"
        ]
        spans = turn_spans(prefixes, full)
    except Exception as e:  # noqa: BLE001 - a template raises what it likes (jinja's TemplateError, ...)
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise RegressError(f"{source}:{ex.line}: the base's chat template cannot render this example: {first}") from e
    enc = tok(full, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    mask = assistant_mask(enc["offset_mapping"], ids, spans, eot_ids)
    return Rendered(ex.line, tuple(ids), tuple(mask))
