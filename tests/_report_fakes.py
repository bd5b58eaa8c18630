"""Synthetic comparisons for the report tests: realistic fake records, no model.

``fake_comparison(n_items)`` makes base and candidate ``Record``s shaped like the demo
world's (chat-templated prompts, character-level token ids, a fine-tune that forgot some
answers, loops to its token limit on others and learned a new skill), then runs the real
``compare.pair``, ``compare.task_table`` and ``gate.judge`` on them. ``hostile=True``
plants hostile outputs (script tags, ANSI, NUL, lone surrogates, a megabyte line) in
negative flips, which the explorer always shows.
"""

from __future__ import annotations

import hashlib
import random

import numpy as np
import pandas as pd

from harness import causes, compare, gate
from harness.types import Checkpoint, Comparison, Record

MAX_TOKENS = 128
PWN = "window.__pwned"
HOSTILE_OUTPUTS = (
    f"41 <script>{PWN}=1</script> done",
    f"</script><script>{PWN}=2</script><!-- <p>",
    f'<img src=x onerror="{PWN}=3"><svg onload="{PWN}=4"></svg>',
    "\x1b[31mred\x1b[0m \x00NUL\x00 \u202egnp.exe\u2028sep\u2029 \x7f\x85 end",
    "x" * 1_000_000,
    "]]> {{ s }} {% raw %} ${alert(1)} \\u003c/script> &lt;b&gt; &amp;",
)
HOSTILE_ID = '<img src=y onerror="window.__pwned=6">\x1b'
TASKS = ("demo_add", "demo_rev", "demo_sort", "demo_cmp", "demo_sub")


def _h(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode("utf-8", "surrogatepass")).hexdigest()[:16]


def _question(task: str, rng: random.Random) -> tuple[str, str, tuple[str, ...]]:
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    if task == "demo_add":
        return f"what is {a}+{b}?", str(a + b), ()
    if task == "demo_sub":
        return f"what is {a}-{b}?", str(a - b), ()
    if task == "demo_cmp":
        return f"which is larger: {a} or {b}?", str(max(a, b)), (str(a), str(b))
    word = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 6)))
    if task == "demo_rev":
        return f"reverse {word}", word[::-1], ()
    digits = "".join(rng.choice("0123456789") for _ in range(rng.randint(3, 6)))
    return f"sort {digits}", "".join(sorted(digits)), ()


def _wrong(answer: str, rng: random.Random) -> str:
    if answer.lstrip("-").isdigit():
        return str(int(answer) + rng.choice((-10, -1, 1, 10)))
    return answer[1:] + answer[:1] if len(answer) > 1 else answer + "x"


def _loop(answer: str, question: str, out_len: int) -> str:
    text = answer + "\n"
    unit = f"{question} {answer}\n"
    while len(text) < out_len:
        text += unit
    return text[:out_len]


def _record(task: str, iid: str, q: str, target: str, choices: tuple[str, ...], output: str, finish: str) -> Record:
    prompt = f"<|system|>You are a helpful assistant.<|end|><|user|>{q}<|end|><|assistant|>"
    mc = bool(choices)
    answer = output.split("\n", 1)[0].strip()
    return Record(
        task=task,
        item_id=iid,
        item_hash=_h(task, iid, q, target),
        prompt_hash=_h(prompt),
        prompt=prompt,
        target=target,
        output=output,
        answer=answer,
        score=1.0 if answer == target else 0.0,
        metric="acc" if mc else "exact_match",
        kind="multiple_choice" if mc else "generate_until",
        finish=None if mc else finish,
        n_tokens=0 if mc else len(output),
        token_ids=() if mc or task == "demo_sort" else tuple(ord(ch) % 4096 for ch in output),
    )


def fake_records(n_items: int, seed: int = 0, out_len: int = MAX_TOKENS,
                 tasks: tuple[str, ...] = TASKS) -> tuple[list[Record], list[Record]]:  # fmt: skip
    """Base and candidate records over ``n_items`` items spread across ``tasks``."""
    rng = random.Random(seed)
    base, cand = [], []
    for i in range(n_items):
        task = tasks[i % len(tasks)]
        iid = f"{i // len(tasks):05d}"
        q, target, choices = _question(task, rng)
        new_skill = task == "demo_sub"
        b_out = target if rng.random() < (0.08 if new_skill else 0.9) else _wrong(target, rng)
        roll = rng.random()
        c_finish = "eos"
        if new_skill:
            c_out = target if roll < 0.8 else _wrong(target, rng)
        elif choices:
            c_out = b_out if roll < 0.85 else (choices[0] if choices[1] == b_out else choices[1])
        elif roll < 0.7:
            c_out = b_out
        elif roll < 0.85:
            c_out = _wrong(target, rng)
        else:
            c_out, c_finish = _loop(_wrong(target, rng) if roll < 0.95 else target, q, out_len), "length"
        base.append(_record(task, iid, q, target, choices, b_out, "eos"))
        cand.append(_record(task, iid, q, target, choices, c_out, c_finish))
    return base, cand


def plant_hostile(base: list[Record], cand: list[Record]) -> None:
    """Make the first demo_add items negative flips whose candidate outputs are hostile."""
    from dataclasses import replace

    slots = [i for i, r in enumerate(base) if r.task == "demo_add"][: len(HOSTILE_OUTPUTS) + 1]
    for k, (i, out) in enumerate(zip(slots, HOSTILE_OUTPUTS)):
        b, c = base[i], cand[i]
        evil = f"<b>{b.target}</b>" if k == 0 else b.target
        base[i] = replace(b, output=b.target + " <i>ok</i>", answer=b.target, score=1.0, target=evil)
        cand[i] = replace(c, output=out, answer=out[:50], score=0.0, finish="length", n_tokens=MAX_TOKENS,
                          target=evil, token_ids=())  # fmt: skip
    i = slots[-1]  # a hostile prompt and item id
    for side in (base, cand):
        side[i] = replace(side[i], prompt=side[i].prompt + f"<script>{PWN}=5</script>\x00", item_id=HOSTILE_ID)
    cand[i] = replace(cand[i], output="<script>x</script>", answer="?", score=0.0)
    base[i] = replace(base[i], score=1.0)


def plant_surrogates(items: pd.DataFrame) -> pd.DataFrame:
    """Lone surrogates (invalid UTF-8 decoded with surrogateescape, or a JSON "\\ud800") in
    the last negative flip's candidate output and target. Planted in the item frame as
    object columns: pandas' Arrow-backed str dtype cannot hold them, so ``compare.pair``
    could not carry them through from records."""
    items = items.copy()
    i = int(np.flatnonzero(items["flip"].to_numpy() == "neg")[-1])
    for col, text in (("output_cand", "bad \udcff bytes \ud800 here"), ("target", "t\udc80")):
        values = items[col].astype(object).to_numpy().copy()
        values[i] = text
        items[col] = pd.Series(values, index=items.index, dtype=object)
    return items


def fake_comparison(n_items: int = 500, seed: int = 0, hostile: bool = True, drift: bool = True,
                    out_len: int = MAX_TOKENS, tasks: tuple[str, ...] = TASKS) -> Comparison:  # fmt: skip
    base, cand = fake_records(n_items, seed, out_len, tasks)
    if hostile:
        plant_hostile(base, cand)
    items, warnings = compare.pair(base, cand)
    if hostile:
        items = plant_surrogates(items)
    if drift:
        rng = np.random.default_rng(seed)
        loops = items["loop_cand"].to_numpy()
        items["stop_drift"] = np.where(loops, rng.normal(-4.0, 1.5, len(items)), rng.normal(-0.2, 0.4, len(items)))
        items["answer_drift"] = rng.normal(-0.1, 0.2, len(items))
    items = causes.add_causes(items)  # as pipeline.comparison_of does (no knowledge probe here)
    tasks, overall = compare.task_table(items)  # the drift means come from the item columns
    policy = gate.Policy()
    return Comparison(
        Checkpoint(".cache/demo/base", "fp-base-5678"),
        Checkpoint(".cache/demo/ft-all-<b>tokens</b>", "fp-cand-1234"),
        "demo",
        "suitehash0001",
        "hf",
        items,
        tasks,
        overall,
        gate.judge(tasks, policy),
        policy,
        tuple(warnings),
    )
