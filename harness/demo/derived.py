"""Demo fine-tunes built one at a time from the cached demo base (``ft-early-eot``,
``ft-format``, ``ft-overwrite``): a seeded recipe, a stream of examples, and the cached,
locked, atomic build step they share.

Each is ``DIR/NAME`` with its own stamp ``DIR/NAME.BUILD.json`` (the key its module
computes), so building one never retrains another or the base. The folder is written
under a temporary name and renamed into place, so an interrupted build leaves nothing
half-made.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from harness.demo.world import Example


@dataclass(frozen=True)
class Recipe:
    """How a demo fine-tune is trained (these, the real demo's and the adapters): optimiser
    steps, peak learning rate, examples per step, the seed (of the example stream and of
    torch) and the warm-up steps."""

    steps: int
    lr: float
    batch_size: int
    seed: int
    warmup: int


def fine_tune(
    out: Path, name: str, key: str, stream: Callable[[int], Iterator[Example]], recipe: Recipe, force: bool = False
) -> Path:
    """Build (or reuse) ``out/NAME``: the demo base in ``out`` trained on
    ``stream(recipe.seed)`` with the loss on the answers, stamped with ``key``; return its path."""
    from harness.demo import build  # torch and transformers: not for a module that only wants ``Recipe``

    base = build.build_demo(out)["base"]
    path, stamp = out / name, out / f"{name}.BUILD.json"

    def cached() -> bool:
        return not force and build._read_stamp(stamp).get("key") == key and path.is_dir()

    if cached():
        return path
    with build._build_lock(out):
        if cached():
            return path
        print(f"building the demo checkpoint {path} (about 30 s)", file=sys.stderr)
        model, tok, info = _train(base, stream(recipe.seed), recipe)
        work = out / f".building-{name}-{key}"
        shutil.rmtree(work, ignore_errors=True)
        build._save(model, tok, work)
        if path.exists():
            shutil.rmtree(path)
        work.rename(path)
        stamp.write_text(json.dumps({"key": key, "base_key": build.base_key(), "train": info, "at": time.time()}))
    return path


def _train(base: Path, examples: Iterator[Example], r: Recipe):  # type: ignore[no-untyped-def]
    import torch
    from transformers import LlamaForCausalLM

    from harness.demo import train as trainer
    from harness.demo.tokenizer import build_tokenizer

    tok = build_tokenizer()
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        model = LlamaForCausalLM.from_pretrained(str(base))
        info = trainer.train(model, tok, examples, steps=r.steps, lr=r.lr, batch_size=r.batch_size,
                             loss_on="answer", seed=r.seed, warmup=r.warmup)  # fmt: skip
    finally:
        torch.set_num_threads(prev_threads)
    return model, tok, info
