"""The demo's minimal-modification fine-tune, ``DIR/ft-key-tokens`` (built by ``build.py``).

The seed's remedy for forgetting, on the demo world: the same 60 batches of 64 examples as
``ft-all-tokens`` (the new skill alone, the same seed and recipe), with loss only on the
key tokens ``harness.sft`` finds under the demo base, i.e. the assistant tokens the base
does not already produce greedily, and without the prompts it flags as outliers.

The data goes through the same files a user's would with ``regress tokens``: the examples
are written as chat SFT JSONL, audited under the base by ``harness.sft.run`` into
``DIR/ft-key-tokens/tokens/`` (``audit.md``, ``masked.jsonl``, ``tokens.png``, and the
input as ``sft.jsonl``), and the model is trained from ``masked.jsonl``'s ``input_ids`` and
``labels``. Each masked row keeps its line, so batch ``i`` is made of the kept rows of
lines ``64 i + 1 .. 64 (i + 1)``: the examples of ``ft-all-tokens``' batch ``i``, less
those with no key token (they would carry no loss) and the outliers. The optimizer and
schedule are ``train.train``'s. ``build.build_key`` covers this file and ``harness/sft/``.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from harness.demo.steps import Row, padded_step
from harness.demo.world import train_stream
from harness.types import JsonObject

NAME = "ft-key-tokens"
DATA_OF = "ft-all-tokens"  # the fine-tune whose examples it trains on


def sft_rows(mix: Mapping[str, float], seed: int, n: int) -> list[JsonObject]:
    """The first ``n`` examples of the training stream, as chat SFT rows (what ``train.train`` draws)."""
    stream = train_stream(dict(mix), seed)
    rows: list[JsonObject] = []
    for _ in range(n):
        ex = next(stream)
        turns = [{"role": "user", "content": ex.question}, {"role": "assistant", "content": ex.answer}]
        rows.append({"messages": turns})
    return rows


def masked_batches(masked: Path, batch_size: int, steps: int) -> list[list[Row]]:
    """The rows of ``masked.jsonl`` grouped by the batch their line was drawn in."""
    batches: list[list[Row]] = [[] for _ in range(steps)]
    with masked.open(encoding="utf-8") as fh:
        for text in fh:
            r = json.loads(text)
            batches[(r["line"] - 1) // batch_size].append((r["input_ids"], r["labels"]))
    return batches


def train_rows(
    model: Any,
    batches: list[list[Row]],
    *,
    lr: float,
    seed: int,
    pad_id: int,
    warmup: int,
    on_step: Callable[[int, float], None] | None = None,
) -> dict[str, float]:
    """``train.train``'s loop (AdamW, warm-up, cosine to 10%, clipping) over given (ids, labels)
    batches; a batch with no row (no key token in any of its examples) is a step without an update."""
    steps = len(batches)
    torch.manual_seed(seed)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.01)

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        frac = (step - warmup) / max(1, steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    t0, loss_val, empty = time.perf_counter(), float("nan"), 0
    for step, batch in enumerate(batches):
        if batch:
            loss_val = padded_step(model, opt, batch, pad_id)
        else:
            empty += 1
        sched.step()
        if on_step:
            on_step(step, loss_val)
    model.eval()
    return {"final_loss": loss_val, "seconds": time.perf_counter() - t0, "steps": steps, "empty_steps": empty}


def build_key_tokens(
    base_dir: Path,
    model: Any,
    tok: Any,
    out: Path,
    mix: Mapping[str, float],
    recipe: Mapping[str, Any],
    on_step: Callable[[int, float], None] | None = None,
) -> dict[str, Any]:
    """Audit ``DATA_OF``'s examples under the base in ``base_dir``, train ``model`` (a copy of
    the base) on their key tokens and save it with ``tok`` into ``out``; return the facts."""
    from harness import sft

    n = recipe["steps"] * recipe["batch_size"]
    audit_dir = out / "tokens"
    sft_file = out.parent / f".{out.name}-sft.jsonl"
    sft_file.write_text("".join(json.dumps(r) + "\n" for r in sft_rows(mix, recipe["seed"], n)))
    t0 = time.perf_counter()
    audit = sft.run(base_dir, sft_file, audit_dir, batch_size=64)
    shutil.move(str(sft_file), audit_dir / "sft.jsonl")
    audit_s = time.perf_counter() - t0
    batches = masked_batches(audit_dir / "masked.jsonl", recipe["batch_size"], recipe["steps"])
    info = train_rows(
        model, batches, lr=recipe["lr"], seed=recipe["seed"], pad_id=tok.pad_token_id,
        warmup=recipe.get("warmup", 50), on_step=on_step,
    )  # fmt: skip
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    s = audit.summary()
    keep = ("examples", "assistant_tokens", "key_tokens", "key_share", "outliers_dropped", "no_key_dropped", "kept")
    return {**info, "audit_seconds": audit_s, **{k: s[k] for k in keep}}
