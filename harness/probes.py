"""Probes of degeneration that move before answers flip, and the end-of-turn config check.

* ``eot_setup(path, tokenizer)``: which token the chat template ends an assistant turn
  with, generation_config's eos ids and the tokenizer's eos; its ``stop_ids`` are the
  end-of-turn ids every backend stops on. ``config_findings``: a template that ends turns
  with a token the checkpoint does not stop on is the classic cause of "it never stops";
  it is reported, with the fix, before any generation.
* Termination probe: open-ended chat prompts generated with the end-of-turn tokens as the
  only stop and a generous token limit; ``compare.termination_stats`` summarises each
  checkpoint's stop rate, output lengths and tail-repetition rate.
* Drift probes, for each generated item the base answered and stopped on:
  stop-token drift = candidate's log P(end-of-turn | prompt + base answer) minus the
  base's; base-answer drift = mean per-token log-prob of the base's answer under the
  candidate minus under the base. Both are log-likelihood requests, so every backend
  answers them and the store caches them like any other request.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import SuiteError
from harness.types import EotSetup, GenRequest, LoglikRequest, Record

SENTINEL = "\u2063regress\u2063"


# -- configuration check --------------------------------------------------------------


def generation_eos_ids(path: str | Path) -> tuple[int, ...]:
    """generation_config's eos ids as transformers reads them when it loads the model: from
    generation_config.json, or, where that file is missing or not JSON, derived from
    config.json (as ``from_pretrained`` sets ``model.generation_config``, and as vLLM reads
    it); () where neither says or transformers rejects the file."""
    from transformers import GenerationConfig

    try:
        try:
            config = GenerationConfig.from_pretrained(str(path), local_files_only=True)
        except OSError:
            config = GenerationConfig.from_pretrained(
                str(path), config_file_name="config.json", _from_model_config=True, local_files_only=True
            )
    except (OSError, ValueError):
        return ()
    eos = config.eos_token_id
    return tuple(int(x) for x in (eos if isinstance(eos, list | tuple) else [eos]) if x is not None)


def eot_setup(path: str | Path, tokenizer: Any) -> EotSetup:
    """How ``path`` ends assistant turns: its chat template's turn end and the ids it stops
    on (``EotSetup.stop_ids``, the one list every backend stops on)."""
    end_text = end_id = None
    if getattr(tokenizer, "chat_template", None):
        try:
            text = tokenizer.apply_chat_template(
                [{"role": "user", "content": "hi"}, {"role": "assistant", "content": SENTINEL}], tokenize=False
            )
        except Exception:  # noqa: BLE001 - a template that cannot render an assistant turn
            text = ""
        if SENTINEL in text:
            tail = text.split(SENTINEL, 1)[1]
            ids = tokenizer(tail, add_special_tokens=False).input_ids if tail else []
            if ids:
                end_id = int(ids[0])
                end_text = tokenizer.decode([end_id], skip_special_tokens=False)
    return EotSetup(end_text, end_id, generation_eos_ids(path), tokenizer.eos_token_id)


def config_findings(name: str, setup: EotSetup) -> list[str]:
    """Problems with a checkpoint's end-of-turn setup, each with its fix."""
    out = []
    if setup.template_turn_end_id is not None and setup.template_turn_end_id not in setup.stop_ids:
        out.append(
            f"{name}: the chat template ends assistant turns with {setup.template_turn_end!r} "
            f"(id {setup.template_turn_end_id}), which is not a stop token (generation_config eos "
            f"{list(setup.generation_eos_ids)}, tokenizer eos {setup.tokenizer_eos_id}); generation will not stop. "
            f"Fix: add {setup.template_turn_end_id} to eos_token_id in generation_config.json"
        )
    if not setup.stop_ids:
        out.append(f"{name}: no eos token in generation_config.json or the tokenizer; generation cannot stop")
    return out


# -- termination probe ----------------------------------------------------------------


@dataclass(frozen=True)
class TerminationProbe:
    prompts: tuple[str, ...]
    max_tokens: int


def load_termination_probe(spec: dict[str, Any], suite_dir: Path) -> TerminationProbe:
    f = suite_dir / str(spec.get("prompts", ""))
    if not f.is_file():
        raise SuiteError(f"termination probe prompts not found: {f}")
    prompts = []
    for lineno, line in enumerate(f.read_text().splitlines(), 1):
        if line.strip():
            try:
                prompts.append(str(json.loads(line)["prompt"]))
            except (ValueError, KeyError, TypeError) as e:
                raise SuiteError(f"{f}:{lineno}: a probe line must be JSON with a 'prompt' ({e})") from e
    if not prompts:
        raise SuiteError(f"termination probe {f} has no prompts")
    max_tokens = spec.get("max_tokens", 256)
    if not isinstance(max_tokens, int) or max_tokens < 1:
        raise SuiteError(f"termination probe max_tokens must be a positive integer, got {max_tokens!r}")
    return TerminationProbe(tuple(prompts), max_tokens)


def termination_requests(probe: TerminationProbe, chat: Any) -> list[GenRequest]:
    """End-of-turn tokens are the only stop: no stop strings."""
    return [GenRequest(chat([{"role": "user", "content": p}], True), (), probe.max_tokens) for p in probe.prompts]


# -- drift ----------------------------------------------------------------------------

# Two computations of one drift value agree to this (nats): with drafting, a candidate's drift
# is read from its verify pass (``backends.base.Forced``), the same forward pass in another
# batch, so float32 noise (measured up to 1e-5 with vllm, 1e-6 with hf) separates it from
# the value a run without drafting, or the base's own run, computes.
DRIFT_NOISE = 1e-4


def same_drift(a: Mapping[Any, tuple[float, float]], b: Mapping[Any, tuple[float, float]]) -> bool:
    """Two runs' drift values (per item: stop, answer) equal to ``DRIFT_NOISE``."""
    if a.keys() != b.keys():
        return False
    return all(_close(x, y) for k in a for x, y in zip(a[k], b[k]))


def _close(x: float, y: float) -> bool:
    return (math.isnan(x) and math.isnan(y)) or x == y or abs(x - y) <= DRIFT_NOISE


def drift_items(reference: Sequence[Record]) -> list[Record]:
    """Items the reference (base) answered and stopped on with an end-of-turn token."""
    return [r for r in reference if r.kind == "generate_until" and r.finish == "eos" and r.output]


def drift_requests(reference: Sequence[Record], eot_texts: Sequence[str]) -> list[LoglikRequest]:
    reqs = []
    for r in drift_items(reference):
        reqs.append(LoglikRequest(r.prompt, r.output))
        reqs.extend(LoglikRequest(r.prompt + r.output, e) for e in eot_texts)
    return reqs


def drift_values(
    reference: Sequence[Record], eot_texts: Sequence[str], answers: Sequence[Any]
) -> dict[tuple[str, str], tuple[float, float]]:
    """(task, item) -> (log P(end-of-turn) after the reference answer, mean log-prob per
    token of the reference answer), from the answers to ``drift_requests``."""
    out = {}
    k = len(eot_texts) + 1
    for i, r in enumerate(drift_items(reference)):
        ans, *eots = answers[i * k : (i + 1) * k]
        p_eot = _logsumexp([e.logprob for e in eots]) if eots else float("nan")
        out[(r.task, r.item_id)] = (p_eot, ans.logprob / max(1, ans.n_tokens))
    return out


def _logsumexp(xs: Sequence[float]) -> float:
    """log(sum(exp(x))) without underflow; -inf when every x is -inf."""
    m = max(xs)
    if m == float("-inf"):
        return m
    return m + math.log(sum(math.exp(x - m) for x in xs))
