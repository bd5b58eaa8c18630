"""Scoring rendered examples under the base: teacher forcing, batched, ``torch.no_grad``,
float32 on CPU. Each assistant token gets its greedy match, probability and rank; each
example its prompt's summed negative log-likelihood (for the outlier rule)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness.errors import RegressError
from harness.sft.records import Rendered, Scored, TokenScore
from harness.sft.rule import TokenRule, is_key


def token_scores(logits: Any, targets: Any) -> tuple[Any, Any, Any, Any]:
    """Teacher-forced scores of ``targets`` (..., n) under ``logits`` (..., n, vocab), position i
    predicting target i: greedy match (argmax == target), probability, rank (1 + the number of
    strictly higher logits) and log-probability, as tensors shaped like ``targets``. One call per
    batch: on a busy CPU every small torch op costs a thread hand-off, so per-row calls are slow."""
    import torch

    logits = logits.float()
    tgt = targets.long().unsqueeze(-1)
    picked = logits.gather(-1, tgt)
    lp = (picked - torch.logsumexp(logits, dim=-1, keepdim=True)).squeeze(-1)
    greedy = logits.argmax(dim=-1) == tgt.squeeze(-1)
    rank = (logits > picked).sum(dim=-1) + 1
    return greedy, lp.exp(), rank, lp


def score(model: Any, tok: Any, items: Sequence[Rendered], rule: TokenRule, batch_size: int = 8) -> list[Scored]:
    """Each rendered example scored under ``model`` (teacher forcing), in the input's order.
    Batches are formed over examples sorted by length, right-padded."""
    import torch
    from tqdm.auto import tqdm

    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    out: dict[int, Scored] = {}
    texts = _TokenTexts(tok)
    order = sorted(range(len(items)), key=lambda i: -len(items[i].ids))
    bar = tqdm(total=len(items), desc="scoring tokens", unit="example", leave=False, disable=None)
    with torch.no_grad():
        for s in range(0, len(order), batch_size):
            batch = [items[i] for i in order[s : s + batch_size]]
            width = max(len(r.ids) for r in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            att = torch.zeros((len(batch), width), dtype=torch.long)
            for j, r in enumerate(batch):
                ids[j, : len(r.ids)] = torch.tensor(r.ids)
                att[j, : len(r.ids)] = 1
            logits = model(input_ids=ids, attention_mask=att).logits
            greedy, prob, rank, lp = (t.tolist() for t in token_scores(logits[:, :-1], ids[:, 1:]))
            for j, (i, r) in enumerate(zip(order[s : s + batch_size], batch)):
                out[i] = _scored(texts, r, greedy[j], prob[j], rank[j], lp[j], rule)
            bar.update(len(batch))
    bar.close()
    return [out[i] for i in range(len(items))]


class _TokenTexts(dict[int, str]):
    """Each token id's text, decoded once."""

    def __init__(self, tok: Any) -> None:
        super().__init__()
        self.tok = tok

    def __missing__(self, tid: int) -> str:
        self[tid] = text = self.tok.decode([tid], skip_special_tokens=False)
        return text


def _scored(texts: _TokenTexts, r: Rendered, greedy: list[bool], prob: list[float], rank: list[int], lp: list[float],
            rule: TokenRule) -> Scored:  # fmt: skip
    toks = []
    nll, n_prompt = 0.0, 0
    for pos, (tid, asst) in enumerate(zip(r.ids, r.assistant)):
        if not asst:
            n_prompt += 1
            if pos > 0:
                nll -= lp[pos - 1]
            continue
        if pos == 0:  # nothing predicts the first token: not scored, never key
            continue
        g, p = greedy[pos - 1], prob[pos - 1]
        toks.append(TokenScore(pos, tid, texts[tid], p, rank[pos - 1], g, is_key(g, p, rule.min_prob)))
    return Scored(r.line, r.ids, tuple(toks), n_prompt, nll)


def load_base(base: str | Path) -> tuple[Any, Any, Any]:
    """(checkpoint, tokenizer, model): validated, with a chat template, float32 on CPU."""
    import torch
    from transformers import AutoModelForCausalLM

    from harness.checkpoint import load

    ckpt = load(base)
    tok = ckpt.tokenizer
    if not getattr(tok, "chat_template", None):
        raise RegressError(f"checkpoint {base} has no chat template: regress tokens renders each example with it")
    if not getattr(tok, "is_fast", False):
        raise RegressError(f"checkpoint {base} has a slow tokenizer: regress tokens needs a fast one (offsets)")
    try:
        model = AutoModelForCausalLM.from_pretrained(ckpt.path, dtype=torch.float32, local_files_only=True)
    except (OSError, ValueError, RuntimeError) as e:
        raise RegressError(f"cannot load model weights from {ckpt.path}: {str(e).splitlines()[0]}") from e
    model.eval()
    return ckpt, tok, model
