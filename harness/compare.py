"""Compare: pair base and candidate records item by item and measure what moved.

``pair(base, cand)`` joins the two record lists on (task, item_id) into one pandas frame
(``ITEM_COLUMNS``), refusing items whose content hash differs or that one side lacks.
``task_table(items)`` reduces it per task (and ``overall``) to accuracies with intervals,
the paired delta and its interval, flips, McNemar p-values (Holm-corrected across tasks),
answer-change and output-identity rates, non-termination and tail-repetition rates, and
the length ratio. All of it is vectorised; 100k item pairs take well under a second.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from harness import detectors, stats
from harness.errors import RegressError
from harness.gate import Verdict
from harness.types import Checkpoint, Record

ITEM_COLUMNS = (
    "task", "item_id", "kind", "metric", "prompt", "target",
    "output_base", "output_cand", "answer_base", "answer_cand",
    "score_base", "score_cand", "correct_base", "correct_cand",
    "finish_base", "finish_cand", "ntok_base", "ntok_cand",
    "identical", "answer_changed", "flip",
    "nonterm_base", "nonterm_cand", "loop_base", "loop_cand",
    "loop_unit_cand", "loop_repeats_cand", "loop_start_cand",
)  # fmt: skip


class CompareError(RegressError):
    """Base and candidate records cannot be paired."""


def utf8(s: str) -> str:
    """Untrusted text made valid UTF-8 (lone surrogates become U+FFFD), as Arrow needs."""
    try:
        s.encode("utf-8")
        return s
    except UnicodeEncodeError:
        return s.encode("utf-8", "surrogatepass").decode("utf-8", "replace")


def _frame(records: Sequence[Record], side: str) -> pd.DataFrame:
    rows = {
        "task": [r.task for r in records],
        "item_id": [r.item_id for r in records],
        "item_hash": [r.item_hash for r in records],
        "prompt_hash": [r.prompt_hash for r in records],
        "kind": [r.kind for r in records],
        "metric": [r.metric for r in records],
        "prompt": [utf8(r.prompt) for r in records],
        "target": [utf8(r.target) for r in records],
        "output": [utf8(r.output) for r in records],
        "answer": [utf8(r.answer) for r in records],
        "score": np.array([r.score for r in records], dtype=float),
        "finish": [r.finish or "" for r in records],
        "ntok": np.array([r.n_tokens for r in records], dtype=np.int64),
    }
    loops = [loop_of(r) for r in records]
    rows["loop"] = [lp is not None for lp in loops]
    rows["loop_unit"] = [_unit_text(lp) for lp in loops]
    rows["loop_repeats"] = [float(lp.repeats) if lp else 0.0 for lp in loops]
    rows["loop_start"] = [int(lp.start) if lp else -1 for lp in loops]
    df = pd.DataFrame(rows)
    if df.duplicated(["task", "item_id"]).any():
        dup = df[df.duplicated(["task", "item_id"])].iloc[0]
        raise CompareError(f"{side} records hold item {dup.task}/{dup.item_id} twice")
    keep = ["task", "item_id", "item_hash", "prompt_hash", "kind", "metric", "prompt", "target"]
    return df.rename(columns={c: f"{c}_{side}" for c in df.columns if c not in keep})


def loop_of(r: Record) -> detectors.Loop | None:
    """Tail repetition of a generation (token ids where the backend gave them)."""
    if r.kind != "generate_until":
        return None
    if r.token_ids:
        return detectors.tail_repetition(r.token_ids)
    return detectors.tail_repetition_text(r.output)


def _unit_text(lp: detectors.Loop | None) -> str:
    if lp is None:
        return ""
    return lp.unit if isinstance(lp.unit, str) else " ".join(map(str, lp.unit))


def pair(base: Sequence[Record], cand: Sequence[Record]) -> tuple[pd.DataFrame, list[str]]:
    """Join base and candidate on (task, item); return the item table and warnings."""
    b, c = _frame(base, "base"), _frame(cand, "cand")
    m = b.merge(c, on=["task", "item_id"], how="outer", suffixes=("", "_c"), indicator=True)
    missing = m[m["_merge"] != "both"]
    if len(missing):
        row = missing.iloc[0]
        side = "candidate" if row["_merge"] == "left_only" else "base"
        raise CompareError(
            f"{len(missing)} item(s) missing on one side, e.g. {row.task}/{row.item_id} has no {side} record"
        )
    bad = m[m["item_hash"] != m["item_hash_c"]]
    if len(bad):
        row = bad.iloc[0]
        raise CompareError(
            f"{len(bad)} item(s) differ in content between base and candidate records, "
            f"e.g. {row.task}/{row.item_id}: the suite changed between the two runs"
        )
    warnings = []
    n_prompt = int((m["prompt_hash"] != m["prompt_hash_c"]).sum())
    if n_prompt:
        warnings.append(f"{n_prompt} prompt(s) differ between base and candidate (different chat templates?)")
    m = m.drop(columns=[x for x in m.columns if x.endswith("_c") or x == "_merge"] + ["item_hash", "prompt_hash"])
    m["correct_base"] = m["score_base"] >= 0.5
    m["correct_cand"] = m["score_cand"] >= 0.5
    m["identical"] = m["output_base"] == m["output_cand"]
    m["answer_changed"] = m["answer_base"] != m["answer_cand"]
    m["flip"] = np.where(
        m["correct_base"] & ~m["correct_cand"], "neg", np.where(~m["correct_base"] & m["correct_cand"], "pos", "")
    )
    m["nonterm_base"] = m["finish_base"] == "length"
    m["nonterm_cand"] = m["finish_cand"] == "length"
    order = {t: i for i, t in enumerate(dict.fromkeys(r.task for r in base))}  # the suite's task order
    m = m.assign(_order=m["task"].map(order)).sort_values(["_order", "item_id"], kind="stable")
    return m[list(ITEM_COLUMNS)].reset_index(drop=True), warnings


def add_drift(
    items: pd.DataFrame,
    base: dict[tuple[str, str], tuple[float, float]],
    cand: dict[tuple[str, str], tuple[float, float]],
) -> pd.DataFrame:
    """Per-item stop-token drift and base-answer drift (candidate minus base), in nats;
    NaN where the base did not answer and stop (no drift is defined there)."""
    keys = list(zip(items["task"], items["item_id"]))
    nan = (float("nan"), float("nan"))
    b = np.array([base.get(k, nan) for k in keys], dtype=float).reshape(-1, 2)
    c = np.array([cand.get(k, nan) for k in keys], dtype=float).reshape(-1, 2)
    out = items.copy()
    out["stop_drift"] = c[:, 0] - b[:, 0]
    out["answer_drift"] = c[:, 1] - b[:, 1]
    return out


def _task_row(name: str, g: pd.DataFrame) -> dict[str, Any]:
    s = stats.paired_summary(g["correct_base"].to_numpy(), g["correct_cand"].to_numpy())
    gen = g[g["kind"] == "generate_until"]
    n_gen = len(gen)

    def rate(col: str) -> float:
        return float(gen[col].mean()) if n_gen else 0.0

    len_b, len_c = float(gen["ntok_base"].sum()), float(gen["ntok_cand"].sum())
    drift = {}
    for col in ("stop_drift", "answer_drift"):
        if col in g:
            vals = g[col].dropna()
            drift[f"{col}_mean"] = float(vals.mean()) if len(vals) else None
            drift[f"{col}_n"] = int(len(vals))
    return {
        **drift,
        "name": name,
        **s,
        "identical_outputs": int(g["identical"].sum()),
        "identity_rate": float(g["identical"].mean()) if len(g) else 1.0,
        "answer_change_rate": float(g["answer_changed"].mean()) if len(g) else 0.0,
        "n_generated": n_gen,
        "nonterm_rate_base": rate("nonterm_base"),
        "nonterm_rate_candidate": rate("nonterm_cand"),
        "loop_rate_base": rate("loop_base"),
        "loop_rate_candidate": rate("loop_cand"),
        "length_ratio": (len_c / len_b) if len_b else (1.0 if not len_c else float("inf")),
    }


def task_table(items: pd.DataFrame) -> list[dict[str, Any]]:
    """Per-task rows (suite order preserved) plus a final ``overall`` row."""
    names = list(dict.fromkeys(items["task"]))
    rows = [_task_row(t, items[items["task"] == t]) for t in names]
    for row, p in zip(rows, stats.holm([r["mcnemar_p"] for r in rows])):
        row["mcnemar_p_holm"] = p
    overall = _task_row("overall", items)
    overall["mcnemar_p_holm"] = overall["mcnemar_p"]
    return [*rows, overall]


@dataclass(frozen=True)
class Comparison:
    """Everything a report needs: both checkpoints, the item table, task rows, verdict."""

    base: Checkpoint
    candidate: Checkpoint
    suite: str
    suite_hash: str
    backend: str
    items: pd.DataFrame
    tasks: list[dict[str, Any]]
    verdict: Verdict
    warnings: tuple[str, ...] = ()
    extras: dict[str, Any] = field(default_factory=dict)
