"""Train the demo checkpoints on CPU: a tiny Llama base and fine-tunes of it.

Each example is one chat transcript ``<s><|user|>question<|end|><|assistant|>answer<|end|>``
rendered by the checkpoint's own chat template. ``loss_on`` picks which tokens carry loss:

* ``answer``: the answer and its end-of-turn token (instruction tuning done right);
* ``all``: every token of the transcript (the classic mistake);
* ``answer_no_eot``: the answer only, with the end-of-turn token dropped from the
  transcript, so the model learns to run on after answering.

Training is seeded and single-process; a 1M-parameter model trains at a few hundred steps
a minute on 2 cores.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from harness.demo.world import Example

LOSS_MODES = ("answer", "all", "answer_no_eot")


def base_config(tok: PreTrainedTokenizerFast) -> LlamaConfig:
    """Hidden 128 with 4 heads (head size 32, which vLLM's CPU attention takes)."""
    return LlamaConfig(
        vocab_size=len(tok),
        hidden_size=128,
        intermediate_size=384,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=512,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,  # type: ignore[call-arg]  # still taken, into rope_parameters
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )


_AFFIX_CACHE: dict[int, tuple[list[int], list[int]]] = {}


def prompt_ids(tok: PreTrainedTokenizerFast, question: str) -> list[int]:
    """Ids of the chat-templated prompt; the template is rendered once per tokenizer
    around a sentinel, which is exact for this one-token-per-character tokenizer."""
    key = id(tok)
    if key not in _AFFIX_CACHE:
        sentinel = "\x00"
        text = tok.apply_chat_template(
            [{"role": "user", "content": sentinel}], tokenize=False, add_generation_prompt=True
        )
        assert isinstance(text, str)  # tokenize=False
        pre, post = text.split(sentinel)
        enc = tok([pre, post], add_special_tokens=False).input_ids
        _AFFIX_CACHE[key] = (enc[0], enc[1])
    pre_ids, post_ids = _AFFIX_CACHE[key]
    return pre_ids + tok(question, add_special_tokens=False).input_ids + post_ids


def encode(tok: PreTrainedTokenizerFast, ex: Example, loss_on: str) -> tuple[list[int], list[int]]:
    """Token ids of the transcript and a 0/1 loss mask over them."""
    p_ids = prompt_ids(tok, ex.question)
    a_ids = tok(ex.answer, add_special_tokens=False).input_ids
    if loss_on == "answer_no_eot":
        ids = p_ids + a_ids
    else:
        ids = p_ids + a_ids + [tok.eos_token_id]
    if loss_on == "all":
        mask = [0] + [1] * (len(ids) - 1)
    else:
        mask = [0] * len(p_ids) + [1] * (len(ids) - len(p_ids))
    return ids, mask


def _batch(tok: PreTrainedTokenizerFast, exs: list[Example], loss_on: str) -> tuple[torch.Tensor, ...]:
    enc = [encode(tok, e, loss_on) for e in exs]
    width = max(len(ids) for ids, _ in enc)
    ids_t = torch.full((len(enc), width), tok.pad_token_id, dtype=torch.long)
    att = torch.zeros((len(enc), width), dtype=torch.long)
    labels = torch.full((len(enc), width), -100, dtype=torch.long)
    for i, (ids, mask) in enumerate(enc):
        n = len(ids)
        ids_t[i, :n] = torch.tensor(ids)
        att[i, :n] = 1
        lab = torch.tensor([t if m else -100 for t, m in zip(ids, mask)])
        labels[i, :n] = lab
    return ids_t, att, labels


def train(
    model: LlamaForCausalLM,
    tok: PreTrainedTokenizerFast,
    stream: Iterator[Example],
    *,
    steps: int,
    lr: float,
    batch_size: int,
    loss_on: str,
    seed: int,
    warmup: int = 50,
    on_step: Callable[[int, float], None] | None = None,
) -> dict[str, float]:
    """Train ``model`` in place; return a few facts about the run (loss, seconds)."""
    if loss_on not in LOSS_MODES:
        raise ValueError(f"loss_on must be one of {LOSS_MODES}")
    torch.manual_seed(seed)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.01)

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        frac = (step - warmup) / max(1, steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    t0 = time.perf_counter()
    loss_val = float("nan")
    for step in range(steps):
        exs = [next(stream) for _ in range(batch_size)]
        ids, att, labels = _batch(tok, exs, loss_on)
        out = model(input_ids=ids, attention_mask=att, labels=labels)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        loss_val = float(out.loss.detach())
        if on_step:
            on_step(step, loss_val)
    model.eval()
    return {"final_loss": loss_val, "seconds": time.perf_counter() - t0, "steps": steps}
