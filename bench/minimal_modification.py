"""The seed's claim, measured: one table row per ``regress compare`` report (summary.json).

    .venv/bin/python bench/minimal_modification.py /tmp/tok-ft-all-tokens /tmp/tok-ft-answer-only /tmp/tok-ft-key-tokens

Each argument is a report folder (or its summary.json), optionally named ``NAME=FOLDER``
(else the candidate checkpoint's folder name). Old skills are every task but the new
one (``--new-skill``, ``demo_count`` by default); over them, pooled by item:

- identity rate: the share of items whose output is byte-identical to the base's;
- NFR (negative flip rate): the share of items the base got right and the candidate wrong,
  with the count;
- accuracy of base and candidate;
- non-termination: the share of generated items the candidate ran to its token limit on;

then the new skill's accuracy (base -> candidate) and the verdict. Prints a Markdown table
(``docs/minimal-modification.md`` and ``bench/RESULTS.md`` carry its output).

``--causes``: a second table, the old skills' lost items by cause (``harness.causes``, from
each summary.json's ``causes``), with the share that is format loss (every cause but
``knowledge lost`` and ``wrong answer``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from typing import Any


def load(arg: str) -> tuple[str, dict[str, Any]]:
    name, sep, where = arg.partition("=")
    if not sep:
        name, where = "", arg
    p = Path(where)
    f = p / "summary.json" if p.is_dir() else p
    s = json.loads(f.read_text())
    return name or Path(s["candidate"]["path"]).name, s


def row(name: str, s: dict[str, Any], new_skill: str) -> str:
    tasks = {t["name"]: t for t in s["tasks"]}
    if new_skill not in tasks:
        raise SystemExit(f"minimal_modification: {name} has no task {new_skill!r} (tasks: {', '.join(tasks)})")
    old = [t for n, t in tasks.items() if n != new_skill]
    n = sum(t["n"] for t in old)
    same = sum(t["identical_outputs"] for t in old)
    neg = sum(t["negative_flips"] for t in old)
    acc_b = sum(t["acc_base"] * t["n"] for t in old) / n
    acc_c = sum(t["acc_candidate"] * t["n"] for t in old) / n
    gen = sum(t["n_generated"] for t in old)
    nonterm = sum(t["nonterm_rate_candidate"] * t["n_generated"] for t in old) / gen if gen else 0.0
    new = tasks[new_skill]
    return (
        f"| {name} | {same / n:.3f} | {neg / n:.3f} ({neg}/{n}) | {acc_b:.3f} -> {acc_c:.3f} | {nonterm:.3f} "
        f"| {new['acc_base']:.3f} -> {new['acc_candidate']:.3f} | {s['verdict']} |"
    )


def causes_row(name: str, s: dict[str, Any], new_skill: str) -> str:
    from harness.causes import CAUSES, FORMAT_LOSS

    per_task = (s.get("causes") or {}).get("tasks") or {}
    total = {c: 0 for c in CAUSES}
    for task, found in per_task.items():
        if task != new_skill:
            for c, n in found.items():
                total[c] += n
    lost = sum(total.values())
    fmt = sum(total[c] for c in FORMAT_LOSS)
    share = f"{fmt / lost:.0%}" if lost else "-"
    return f"| {name} | {lost} | " + " | ".join(str(total[c]) for c in CAUSES) + f" | {share} |"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("reports", nargs="+", help="report folders or summary.json files, optionally NAME=PATH")
    ap.add_argument("--new-skill", default="demo_count", help="the task the fine-tunes were trained for")
    ap.add_argument("--causes", action="store_true", help="also the old skills' lost items by cause")
    a = ap.parse_args(argv)
    print("| fine-tune | identity rate (old skills) | NFR (old skills) | accuracy (old skills) "
          f"| non-termination (old skills) | {a.new_skill} accuracy | verdict |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|:---|")
    for arg in a.reports:
        name, s = load(arg)
        print(row(name, s, a.new_skill))
    if a.causes:
        from harness.causes import CAUSES

        print()
        print("| fine-tune | lost (old skills) | " + " | ".join(CAUSES) + " | format loss |")
        print("|---|" + "---:|" * (len(CAUSES) + 2))
        for arg in a.reports:
            name, s = load(arg)
            print(causes_row(name, s, a.new_skill))
    return 0


if __name__ == "__main__":
    sys.exit(main())
