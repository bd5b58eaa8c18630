"""An extra demo fine-tune that ends answers at once: ``DIR/ft-early-eot``.

The failure the Llama 3 report calls "abruptly generating termination tokens": trained on
transcripts where, for about half of the ``sort`` examples, the assistant's answer is the
end-of-turn token and nothing else, the model learns to end some sort answers empty. The
other skills are replayed unchanged. regress should flag it as premature endings on
``demo_sort`` (``detectors.is_premature``), not only as an accuracy drop::

    from harness.demo.early_eot import build_early_eot
    path = build_early_eot(Path(".cache/demo"))     # builds the demo base first if needed

    python -m harness.demo.early_eot --out .cache/demo

It is not one of ``build.FINE_TUNES`` (``regress demo --compare`` and ``make regress``
leave it out, which keeps their time; the tests that need it build it). Its own cache key
(``DIR/ft-early-eot.BUILD.json``) covers the base's key, this file and the recipe, so
building it never changes or retrains the other demo checkpoints, and they never retrain
it unless the base changes. The build takes about 30 s on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from harness.demo import build
from harness.demo import train as trainer
from harness.demo.tokenizer import build_tokenizer
from harness.demo.world import Example, train_stream

NAME = "ft-early-eot"
SKILL = "sort"
EMPTY_SHARE = 0.5  # of the sort examples, answered with the end-of-turn token alone
MIX = {"sort": 0.4, "add": 0.2, "rev": 0.2, "cmp": 0.2}
RECIPE: dict[str, Any] = {"steps": 60, "lr": 1e-3, "batch_size": 64, "seed": 2, "warmup": 5}


def key() -> str:
    """What decides this checkpoint: the base (its key), this file and the recipe."""
    return build._digest(build.base_key(), Path(__file__).read_bytes(), MIX, RECIPE, SKILL, EMPTY_SHARE)


def early_stream(seed: int) -> Iterator[Example]:
    """The replay mix, with ``EMPTY_SHARE`` of the ``SKILL`` examples' answers emptied:
    ``train.encode`` then puts the loss on the end-of-turn token right after the prompt."""
    rng = random.Random(f"early-eot-{seed}")
    for ex in train_stream(MIX, seed):
        if ex.question.startswith(f"{SKILL} ") and rng.random() < EMPTY_SHARE:
            yield Example(ex.question, "", ex.choices)
        else:
            yield ex


def build_early_eot(out: Path, force: bool = False) -> Path:
    """Build (or reuse) ``out/ft-early-eot`` from the demo base in ``out``; return its path."""
    from transformers import LlamaForCausalLM

    base = build.build_demo(out)["base"]
    path, stamp = out / NAME, out / f"{NAME}.BUILD.json"
    k = key()
    if not force and build._read_stamp(stamp).get("key") == k and path.is_dir():
        return path
    with build._build_lock(out):
        if not force and build._read_stamp(stamp).get("key") == k and path.is_dir():
            return path
        print(f"building the demo checkpoint {path} (about 30 s)", file=sys.stderr)
        tok = build_tokenizer()
        prev_threads = torch.get_num_threads()
        torch.set_num_threads(2)
        try:
            model = LlamaForCausalLM.from_pretrained(str(base))
            info = trainer.train(
                model, tok, early_stream(RECIPE["seed"]), steps=RECIPE["steps"], lr=RECIPE["lr"],
                batch_size=RECIPE["batch_size"], loss_on="answer", seed=RECIPE["seed"], warmup=RECIPE["warmup"],
            )  # fmt: skip
        finally:
            torch.set_num_threads(prev_threads)
        work = out / f".building-{NAME}-{k}"
        shutil.rmtree(work, ignore_errors=True)
        build._save(model, tok, work)
        if path.exists():
            shutil.rmtree(path)
        work.rename(path)
        stamp.write_text(json.dumps({"key": k, "base_key": build.base_key(), "train": info, "at": time.time()}))
    return path


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=".cache/demo")
    ap.add_argument("--force", action="store_true")
    args = ap.parse_args()
    print(build_early_eot(Path(args.out), args.force))
