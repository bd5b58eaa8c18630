"""The synthetic world the demo checkpoints live in: skills, items and held-out splits.

Four skills the base learns (``add``, ``rev``, ``sort``, ``cmp``) and one new skill the
fine-tunes learn (``count``: how many times a token repeats in a long prompt). Each skill
enumerates or samples its items from a seeded RNG, sets aside a held-out evaluation split
(written as lm-eval JSONL under ``suites/demo/``) and draws training examples only from
the rest, so no evaluation item is ever trained on.

All text uses the demo tokenizer's character vocabulary (``harness.demo.tokenizer``).
"""

from __future__ import annotations

import json
import random
import string
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

EVAL_ITEMS = 500
SEED = 1234

# Open-ended chat prompts of the demo world for the termination probe: a base answers
# them briefly and stops; a checkpoint that lost its end-of-turn token runs on.
PROBE_TEMPLATES = (
    "what is {a}+{b}?",
    "reverse {w}",
    "sort {d}",
    "which is larger: {a} or {b}?",
)


@dataclass(frozen=True)
class Example:
    """One question/answer pair; ``choices`` set for multiple-choice items."""

    question: str
    answer: str
    choices: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        return self.question


def _add(a: int, b: int) -> Example:
    return Example(f"what is {a}+{b}?", str(a + b))


def _cmp(a: int, b: int) -> Example:
    return Example(f"which is larger: {a} or {b}?", str(max(a, b)), (str(a), str(b)))


def _count(rng: random.Random, lo: int, hi: int) -> Example:
    unit = str(rng.randint(10, 99)) if rng.random() < 0.5 else _word(rng)[:3]
    n = rng.randint(lo, hi)
    return Example(f"how many: {' '.join([unit] * n)}?", str(n))


def _word(rng: random.Random) -> str:
    return "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(3, 6)))


def _digits(rng: random.Random) -> str:
    return "".join(rng.choice(string.digits) for _ in range(4))


@dataclass(frozen=True)
class Skill:
    """A skill: how to draw one random example, and whether it is scored by choice."""

    name: str
    draw: Callable[[random.Random], Example]
    multiple_choice: bool = False
    description: str = ""


def _two_digit_pair(rng: random.Random, ordered: bool = False, distinct: bool = False) -> tuple[int, int]:
    while True:
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        if ordered and a < b:
            a, b = b, a
        if distinct and a == b:
            continue
        return a, b


SKILLS: dict[str, Skill] = {
    "add": Skill("add", lambda r: _add(*_two_digit_pair(r)), description="2-digit addition"),
    "rev": Skill(
        "rev",
        lambda r: (lambda w: Example(f"reverse {w}", w[::-1]))(_word(r)),
        description="reverse a 3-6 letter word",
    ),
    "sort": Skill(
        "sort",
        lambda r: (lambda d: Example(f"sort {d}", "".join(sorted(d))))(_digits(r)),
        description="sort 4 digits ascending",
    ),
    "cmp": Skill(
        "cmp",
        lambda r: _cmp(*_two_digit_pair(r, distinct=True)),
        multiple_choice=True,
        description="pick the larger of two 2-digit numbers (multiple choice)",
    ),
    "count": Skill("count", lambda r: _count(r, 8, 20), description="count 8-20 repeats of a token (new skill)"),
    # What the base sees of the new skill: its format and vocabulary with 2-4 repeats only.
    "count1": Skill("count1", lambda r: _count(r, 2, 4), description="count 2-4 repeats"),
}
BASE_SKILLS = ("add", "rev", "sort", "cmp")
NEW_SKILL = "count"


def eval_split(skill: str, n: int = EVAL_ITEMS) -> list[Example]:
    """The held-out items of ``skill``: ``n`` distinct examples from a seeded RNG."""
    rng = random.Random(f"{SEED}-eval-{skill}")
    seen: dict[str, Example] = {}
    draw = SKILLS[skill].draw
    while len(seen) < n:
        ex = draw(rng)
        seen.setdefault(ex.key, ex)
    return list(seen.values())


def train_stream(mix: dict[str, float], seed: int) -> Iterator[Example]:
    """An endless stream of training examples drawn by weight from ``mix``,
    never one of the held-out items of any skill."""
    held_out = {ex.key for s in SKILLS for ex in eval_split(s)}
    rng = random.Random(f"{SEED}-train-{seed}")
    names = list(mix)
    weights = [mix[n] for n in names]
    while True:
        skill = rng.choices(names, weights)[0]
        ex = SKILLS[skill].draw(rng)
        if ex.key not in held_out:
            yield ex


def write_eval_jsonl(skill: str, path: Path) -> None:
    """Write the held-out split of ``skill`` as lm-eval JSONL."""
    rows = []
    for i, ex in enumerate(eval_split(skill)):
        row: dict[str, object] = {"id": f"{skill}-{i:04d}", "question": ex.question, "answer": ex.answer}
        if ex.choices:
            row["choices"] = list(ex.choices)
            row["label"] = ex.choices.index(ex.answer)
        rows.append(row)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def probe_prompts(n: int = 200) -> list[str]:
    """Open-ended chat prompts of the demo world (held-out forms) for the termination probe."""
    rng = random.Random(f"{SEED}-probe")
    out: list[str] = []
    while len(out) < n:
        t = PROBE_TEMPLATES[len(out) % len(PROBE_TEMPLATES)]
        a, b = _two_digit_pair(rng, distinct=True)
        out.append(t.format(a=a, b=b, w=_word(rng), d=_digits(rng)))
    return out
