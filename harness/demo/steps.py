"""One optimizer step on a padded batch of (token ids, labels) rows, shared by the key-token
fine-tune (``key_tokens``) and the real demo's fine-tunes (``real``). The demo base's own
loop (``train.train``) keeps its copy: that file is part of the base's cache key."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

Row = tuple[list[int], list[int]]  # token ids and labels (-100: no loss)


def padded_step(model: Any, opt: Any, batch: Sequence[Row], pad_id: int) -> float:
    """Right-pad the rows, take the loss, clip the gradient norm to 1 and step; the loss."""
    import torch

    width = max(len(ids) for ids, _ in batch)
    ids = torch.tensor([i + [pad_id] * (width - len(i)) for i, _ in batch])
    att = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i, _ in batch])
    labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in batch])
    out = model(input_ids=ids, attention_mask=att, labels=labels)
    opt.zero_grad(set_to_none=True)
    out.loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return float(out.loss.detach())
