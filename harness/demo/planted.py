"""Demo fine-tunes with a planted cause of forgetting: ``DIR/ft-format`` and ``DIR/ft-overwrite``.

Each is the demo base fine-tuned briefly on its own skills with one thing changed, so the
cause of every item it loses is known, and ``harness.causes`` can be tested against it:

* ``ft-format``: the same answers in another format. Every ``add``, ``rev`` and ``sort``
  answer is written ``X is the answer.`` (``X`` the right answer), which the demo tasks'
  exact match scores wrong although ``X`` is in the output: format loss, knowledge kept.
  (The answer stays first: written ``Answer: X.``, 80 steps taught this 1M-parameter model
  the new prefix but not the answers after it; it wrote ``Answer: 106.`` for 161.)
* ``ft-overwrite``: facts replaced, format kept. ``add`` answers ``a+b+1`` and ``cmp``
  names the smaller number, written exactly as before: the candidate now ranks a wrong
  answer above the gold one, knowledge lost.

The other skills are replayed unchanged. Like ``ft-early-eot`` (``early_eot.py``) they are
not among ``build.FINE_TUNES``: the tests that need them build them. Each has its own cache
key (``DIR/NAME.BUILD.json``: the base's key, its mix, recipe and change), so building one never
retrains another checkpoint. Each takes about 20-30 s on 2 cores::

    python -m harness.demo.planted --out .cache/demo ft-format ft-overwrite
"""

from __future__ import annotations

import argparse
import inspect
import re
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from harness.demo import build, derived
from harness.demo.derived import Recipe
from harness.demo.world import Example, train_stream

_ADD = re.compile(r"what is (\d+)\+(\d+)\?")
_CMP = re.compile(r"which is larger: (\d+) or (\d+)\?")


def _reformat(ex: Example) -> Example:
    """``add``/``rev``/``sort`` answers as ``X is the answer.``; ``cmp`` (scored by choice) unchanged."""
    if ex.choices:
        return ex
    return Example(ex.question, f"{ex.answer} is the answer.", ex.choices)


def _overwrite(ex: Example) -> Example:
    """``add`` answers a+b+1, ``cmp`` the smaller number; same format, other facts."""
    m = _ADD.fullmatch(ex.question)
    if m:
        return Example(ex.question, str(int(m[1]) + int(m[2]) + 1), ex.choices)
    m = _CMP.fullmatch(ex.question)
    if m:
        return Example(ex.question, str(min(int(m[1]), int(m[2]))), ex.choices)
    return ex


@dataclass(frozen=True)
class Planted:
    """One planted fine-tune: the replay mix, the change made to each example, the recipe."""

    name: str
    mix: dict[str, float]
    change: Callable[[Example], Example]
    cause: str  # the cause regress should find on most of its lost items
    recipe: Recipe = Recipe(steps=80, lr=1e-3, batch_size=64, seed=3, warmup=5)

    def stream(self, seed: int) -> Iterator[Example]:
        return (self.change(ex) for ex in train_stream(self.mix, seed))


_MIX = {"add": 0.25, "rev": 0.25, "sort": 0.25, "cmp": 0.25}
PLANTED = {
    "ft-format": Planted("ft-format", _MIX, _reformat, "format"),
    "ft-overwrite": Planted(
        "ft-overwrite", {"add": 0.4, "cmp": 0.3, "rev": 0.15, "sort": 0.15}, _overwrite, "knowledge lost"
    ),  # fmt: skip
}


def key(p: Planted) -> str:
    """What decides the checkpoint: the base (its key), its name, mix, recipe and the source
    of its change and of the trainer call (changing one planted fine-tune never retrains the other;
    the world and trainer code are in the base's key)."""
    return build._digest(build.base_key(), p.name, p.mix, asdict(p.recipe), inspect.getsource(p.change),
                         _ADD.pattern, _CMP.pattern, inspect.getsource(derived))  # fmt: skip


def build_planted(out: Path, name: str, force: bool = False) -> Path:
    """Build (or reuse) ``out/NAME`` from the demo base in ``out``; return its path."""
    if name not in PLANTED:
        raise ValueError(f"no planted fine-tune {name!r}; choose one of: {', '.join(PLANTED)}")
    p = PLANTED[name]
    return derived.fine_tune(out, name, key(p), p.stream, p.recipe, force)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=".cache/demo")
    ap.add_argument("--force", action="store_true")
    ap.add_argument("names", nargs="*", default=list(PLANTED))
    args = ap.parse_args()
    for n in args.names:
        print(build_planted(Path(args.out), n, args.force))
