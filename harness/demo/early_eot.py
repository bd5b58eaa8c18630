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
import random
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

from harness.demo import build, derived
from harness.demo.world import Example, train_stream

NAME = "ft-early-eot"
SKILL = "sort"
EMPTY_SHARE = 0.5  # of the sort examples, answered with the end-of-turn token alone
MIX = {"sort": 0.4, "add": 0.2, "rev": 0.2, "cmp": 0.2}
RECIPE = derived.Recipe(steps=60, lr=1e-3, batch_size=64, seed=2, warmup=5)


def key() -> str:
    """What decides this checkpoint: the base (its key), this file and the recipe."""
    return build._digest(build.base_key(), Path(__file__).read_bytes(), MIX, asdict(RECIPE), SKILL, EMPTY_SHARE)


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
    return derived.fine_tune(out, NAME, key(), early_stream, RECIPE, force)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=".cache/demo")
    ap.add_argument("--force", action="store_true")
    args = ap.parse_args()
    print(build_early_eot(Path(args.out), args.force))
