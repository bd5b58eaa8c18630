"""The knowledge probe: is a wrong answer's gold answer still known, teacher-forced?

For each probed item, both checkpoints score the gold answer in the base's own answer
format, as log-likelihood requests through each run's store (like the drift probes):

* generated items: the context is the prompt plus the base's output up to its answer (the
  last occurrence of what the task's filter extracted from it; of the target where the
  filter rewrote it; else the whole output is the answer). The gold continuation is the
  base's answer span as it wrote it (the base was right, so it is the gold answer in the
  base's format).
  The candidate also scores its own extracted answer in the same slot: the gold answer is
  "first" when it beats it.
* multiple-choice items: lm-eval's own context and the gold choice (answers the store
  already holds, no new request); the gold is first where the candidate chose it.

``harness.causes.knowledge_kept`` reads the result: kept where the candidate ranks the gold
answer first, or its gold log-likelihood is within ``causes.KNOWLEDGE_MARGIN`` nats of the
base's. By default the probe runs on negative flips only (the items whose cause it
decides, and the format and stop losses beside them); ``--knowledge-probe all`` runs it on every
item the base got right (what calibrated the margin).

Columns added to the item table: ``gold_ll_base``, ``gold_ll_cand`` (nats; NaN where not
probed) and ``gold_top_cand`` (bool).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from harness.causes import FALLBACKS
from harness.types import Loglik, LoglikRequest

COLUMNS = ("gold_ll_base", "gold_ll_cand", "gold_top_cand")


@dataclass(frozen=True)
class ProbeItem:
    """One probed item: its row in the item table, the gold request, and the candidate's own
    answer in the same slot (None: multiple choice, or no answer of its own to rank)."""

    row: int
    gold: LoglikRequest
    own: LoglikRequest | None = None


def answer_span(output: str, answer: str, target: str) -> tuple[int, int]:
    """Where the answer is in ``output``: the last occurrence of the filtered answer, else
    of the target (case-insensitive), else the whole (stripped) output."""
    for needle, hay in ((answer.strip(), output), (target.strip().lower(), output.lower())):
        if needle and needle not in FALLBACKS:
            at = hay.rfind(needle)
            if at >= 0:
                return at, at + len(needle)
    start = len(output) - len(output.lstrip())
    return start, len(output.rstrip())


def _generated(i: int, r: dict[str, object]) -> ProbeItem:
    out, ans, target = str(r["output_base"]), str(r["answer_base"]), str(r["target"])
    start, end = answer_span(out, ans, target)
    ctx = str(r["prompt"]) + out[:start]
    gold = out[start:end] if r["correct_base"] and end > start else target
    own = str(r["answer_cand"])
    ranked = own.strip() not in FALLBACKS and own != gold
    return ProbeItem(i, LoglikRequest(ctx, gold), LoglikRequest(ctx, own) if ranked else None)


def probe_items(items: pd.DataFrame, probe_all: bool = False) -> list[ProbeItem]:
    """What to probe: negative flips (every item the base got right with ``probe_all``)."""
    pick = (items["correct_base"] if probe_all else items["flip"] == "neg").to_numpy(dtype=bool)
    out = []
    for i in np.flatnonzero(pick):
        r = items.iloc[i].to_dict()
        if r["kind"] == "generate_until":
            out.append(_generated(int(i), r))
        else:
            out.append(ProbeItem(int(i), LoglikRequest(str(r["prompt"]), str(r["target"]))))
    return out


Scorer = Callable[[Sequence[LoglikRequest]], Sequence[Loglik]]


def probe(items: pd.DataFrame, base: Scorer, cand: Scorer, probe_all: bool = False) -> pd.DataFrame:
    """The item table with the probe's columns, from each checkpoint's scorer (its store)."""
    todo = probe_items(items, probe_all)
    golds = [p.gold for p in todo]
    owns = [p.own for p in todo if p.own is not None]
    lb = base(golds) if todo else []
    lc = cand([*golds, *owns]) if todo else []
    out = items.copy()
    out["gold_ll_base"] = np.nan
    out["gold_ll_cand"] = np.nan
    out["gold_top_cand"] = False
    col = {c: out.columns.get_loc(c) for c in COLUMNS}
    own_ll = iter(lc[len(golds) :])
    for p, b, c in zip(todo, lb, lc):
        top = bool(items.iloc[p.row]["correct_cand"]) if p.own is None else c.logprob > next(own_ll).logprob
        if p.own is None and items.iloc[p.row]["kind"] == "generate_until":
            top = False  # no answer of its own to rank against: the margin decides
        out.iloc[p.row, col["gold_ll_base"]] = b.logprob
        out.iloc[p.row, col["gold_ll_cand"]] = c.logprob
        out.iloc[p.row, col["gold_top_cand"]] = top
    return out
