"""Why it forgot: a cause for every negative flip (base right, candidate wrong).

``classify(items)`` is a pure function of the paired item table (``compare.ITEM_COLUMNS``,
plus the knowledge probe's columns where it ran): it returns one cause per item, ``""``
for items that are not negative flips. The first rule that matches wins:

=============================  ==========================================================
cause                          the candidate's output on an item the base got right
=============================  ==========================================================
``empty``                      stopped by itself with nothing (the premature-ending rule)
``cut short``                  stopped by itself far earlier than the base
                               (``detectors.is_premature``)
``runaway``                    ran to the token limit, or ends in a tail loop (or, checked
                               after ``format``: the base's whole output with more glued on,
                               ``ran_on``: it did not stop where the base did)
``unparsed``                   the task's filter extracted no answer from it (lm-eval's
                               fallback ``[invalid]``, or nothing) where it did from the base's
``format``                     the gold answer is in it (normalised: case, whitespace,
                               punctuation, number formats) but the task scored it wrong
``knowledge kept, not          a wrong answer, yet the knowledge probe finds the gold answer
produced``                     still ranked first, or as likely as under the base (within
                               ``KNOWLEDGE_MARGIN``; ``harness.knowledge``)
``knowledge lost``             a wrong answer, and the probe finds the gold answer gone
``wrong answer``               a wrong answer the probe did not look at
=============================  ==========================================================

Multiple-choice (log-likelihood) items have no output of their own to be malformed: they
are wrong answers by construction, and the probe splits them like the others.
Each cause has a one-line remedy (``REMEDY``); ``counts`` and ``summary_line`` say how many
lost items each cause explains, per task.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

EMPTY, CUT_SHORT, RUNAWAY, UNPARSED, FORMAT = "empty", "cut short", "runaway", "unparsed", "format"
KEPT, LOST, WRONG = "knowledge kept, not produced", "knowledge lost", "wrong answer"
CAUSES = (EMPTY, CUT_SHORT, RUNAWAY, UNPARSED, FORMAT, KEPT, LOST, WRONG)
# The causes that are a loss of alignment (the answer's form or its stop), not of knowledge.
FORMAT_LOSS = (EMPTY, CUT_SHORT, RUNAWAY, UNPARSED, FORMAT, KEPT)

REMEDY: Mapping[str, str] = {
    EMPTY: "stop loss: realign on a few base-format examples; check that the end-of-turn token "
    "is trained only after a complete answer",
    CUT_SHORT: "stop loss: realign on a few base-format examples; check that the end-of-turn token "
    "is trained only after a complete answer",
    RUNAWAY: "stop loss: check the chat template and that the end-of-turn token is in the loss "
    "and in generation_config's eos; realign on a few base-format examples",
    UNPARSED: "format loss: realign on a few examples in the base's answer format",
    FORMAT: "format loss: realign on a few examples in the base's answer format",
    KEPT: "alignment loss: the answer is still known; realign on a few base-format examples",
    LOST: "knowledge loss: replay old-task data, a lower learning rate, LoRA, or the key-token mask "
    "of `regress tokens`",
    WRONG: "a wrong answer the knowledge probe did not look at (rerun compare to probe it)",
}

# lm-eval's filters answer this where their pattern finds nothing (RegexFilter's default).
FALLBACKS = frozenset({"[invalid]", ""})

# Calibrated on the demo (docs/DESIGN.md, "Why it forgot"): the drop of the gold answer's
# log-likelihood (nats) that a fine-tune which kept its knowledge stays within. ft-identical:
# 0 on every item (the same files); ft-answer-only (replayed the old skills), on the 158
# items the base got right at --limit 40: median -0.03, 5th percentile -0.76, worst -2.73
# (a demo_cmp choice); rounded up to 3 nats.
KNOWLEDGE_MARGIN = 3.0

_NUM = re.compile(r"(?<![\w.])[-+]?\$?\d[\d,]*(?:\.\d+)?(?![\w.]\d)")
_TOKEN = re.compile(r"\([a-z]\)|\d+(?:\.\d+)?|[^\W_]+")


def _number(m: re.Match[str]) -> str:
    s = m.group(0).replace("$", "").replace(",", "").lstrip("+")
    try:
        x = float(s)
    except ValueError:
        return m.group(0)
    return str(int(x)) if x.is_integer() and abs(x) < 1e15 else repr(x)


def words(text: str) -> list[str]:
    """``text`` as normalised words: NFKC, lower case, numbers in one form ("1,000.0",
    "$1000" -> "1000"), punctuation and whitespace dropped ("(a)" kept whole, a choice label)."""
    t = unicodedata.normalize("NFKC", text).lower()
    return _TOKEN.findall(_NUM.sub(_number, t))


def contains_gold(output: str, target: str) -> bool:
    """The normalised gold answer occurs in the output as whole words. A gold answer of one
    bare letter never matches (it would match the article "a")."""
    gold, out = words(target), words(output)
    if not gold or (len(gold) == 1 and len(gold[0]) == 1 and gold[0].isalpha()):
        return False
    n = len(gold)
    return any(out[i : i + n] == gold for i in range(len(out) - n + 1))


def _unparsed(answer_cand: str, answer_base: str) -> bool:
    return answer_cand.strip() in FALLBACKS and answer_base.strip() not in FALLBACKS


def _generated_cause(row: Mapping[str, Any]) -> str:
    """The output-side causes of one generated negative flip ("" where none applies)."""
    if row["premature_cand"]:
        return EMPTY if not str(row["output_cand"]).strip() else CUT_SHORT
    if row["finish_cand"] == "length" or row["loop_cand"]:
        return RUNAWAY
    if _unparsed(str(row["answer_cand"]), str(row["answer_base"])):
        return UNPARSED
    if contains_gold(str(row["output_cand"]), str(row["target"])):
        return FORMAT
    if ran_on(str(row["output_cand"]), str(row["output_base"])):
        return RUNAWAY
    return ""


def ran_on(output: str, base_output: str) -> bool:
    """The output is the base's whole (right) output and then more, glued on: it did not stop
    where the base did (``181652788`` for ``181``), though it stopped before the token limit."""
    b, c = base_output.strip(), output.strip()
    return bool(b) and len(c) > len(b) and c.startswith(b)


def knowledge_kept(row: Mapping[str, Any], margin: float = KNOWLEDGE_MARGIN) -> bool | None:
    """The probe's answer for one item: None where it did not run."""
    lb, lc = row.get("gold_ll_base", math.nan), row.get("gold_ll_cand", math.nan)
    if lb is None or lc is None or math.isnan(lb) or math.isnan(lc):
        return None
    return bool(row.get("gold_top_cand")) or lc >= lb - margin


def cause_of(row: Mapping[str, Any], margin: float = KNOWLEDGE_MARGIN) -> str:
    """The cause of one item's loss ("" where the item is not a negative flip)."""
    if row["flip"] != "neg":
        return ""
    if row["kind"] == "generate_until":
        found = _generated_cause(row)
        if found:
            return found
    kept = knowledge_kept(row, margin)
    return WRONG if kept is None else (KEPT if kept else LOST)


def classify(items: pd.DataFrame, margin: float = KNOWLEDGE_MARGIN) -> pd.Series:
    """One cause per row of the item table ("" for rows that are not negative flips)."""
    out = np.full(len(items), "", dtype=object)
    neg = np.flatnonzero((items["flip"] == "neg").to_numpy())
    rows = items.iloc[neg].to_dict("records")
    out[neg] = [cause_of(r, margin) for r in rows]
    return pd.Series(out, index=items.index, name="cause", dtype=object)


def add_causes(items: pd.DataFrame, margin: float = KNOWLEDGE_MARGIN) -> pd.DataFrame:
    """The item table with its ``cause`` column (recomputed: ``regress gate`` reclassifies)."""
    out = items.copy()
    out["cause"] = classify(items, margin)
    return out


def counts(causes: Sequence[str]) -> dict[str, int]:
    """Lost items per cause, in ``CAUSES`` order, causes with none left out."""
    found = pd.Series(list(causes), dtype=object).value_counts()
    return {c: int(found[c]) for c in CAUSES if c in found}


def unit_counts(items: pd.DataFrame, names: Sequence[str]) -> dict[str, dict[str, int]]:
    """Lost items per cause of each named unit that lost any: a task, or a group (its
    subtasks' items pooled, as its row in the report)."""
    if "cause" not in items:
        items = add_causes(items)
    lost = items[items["cause"] != ""]
    out = {}
    for name in names:
        mine = lost["task"] == name
        if "group" in lost:
            mine |= lost["group"] == name
        n = counts(lost[mine]["cause"])
        if n:
            out[name] = n
    return out


def explain(items: pd.DataFrame, names: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """One line per named unit that lost items (``summary_line``), and each cause found
    with its remedy: the "why it forgot" block of the terminal and report.md."""
    found = unit_counts(items, names)
    seen = dict.fromkeys(c for n in found.values() for c in n)
    return [summary_line(name, n) for name, n in found.items()], {c: REMEDY[c] for c in seen}


def failing_units(results: Sequence[Any], level: str) -> list[str]:
    """The units (tasks, groups, subtasks) on which a rule of the verdict's level fired
    (``RuleOutcome``s; none for a PASS), in the order the gate judged them."""
    if level == "PASS":
        return []
    return list(dict.fromkeys(r.task for r in results if r.fired and r.severity == level))


def by_task(items: pd.DataFrame) -> dict[str, dict[str, int]]:
    """Lost items per cause for each task (suite order) that lost any."""
    if "cause" not in items:
        items = add_causes(items)
    lost = items[items["cause"] != ""]
    return {t: counts(lost[lost["task"] == t]["cause"]) for t in dict.fromkeys(lost["task"])}


def summary_line(name: str, n: Mapping[str, int]) -> str:
    """``bbh_zeroshot: 64 lost: 30 empty, 12 runaway, 9 unparsed, 13 knowledge lost``."""
    parts = ", ".join(f"{k} {c}" for c, k in n.items())
    return f"{name}: {sum(n.values())} lost: {parts}"
