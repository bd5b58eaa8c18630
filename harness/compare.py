"""Compare: pair base and candidate records item by item and measure what moved.

``pair(base, cand, suite)`` joins the two record lists on (task, item_id) into one pandas frame
(``item_columns()``), refusing items whose content hash differs or that one side lacks. A task's
score is its gate metric (``TaskSpec.gate_metric``, else the record's own ``metric``); where the
suite has groups, a ``group`` column names each subtask's group, and where items carry several
metrics (or the suite names a gate metric) ``metrics_base``/``metrics_cand`` keep every metric of
every item as JSON ({"metric,filter": value}).
``task_table(items)`` reduces it to a ``TaskRow`` per task and one overall: accuracies with intervals,
the paired delta and its interval, flips, McNemar p-values (Holm-corrected across tasks),
answer-change and output-identity rates, the rates of every registered detector
(``harness.registry``: non-termination, tail repetition, premature endings; flagged per
item by ``add_flags``), and the length ratio. ``probe_row`` summarises
the termination probe of both checkpoints as a ``ProbeRow``. All of it is vectorised; 100k
item pairs take well under a second.

``tables(items)`` adds the group rows: one ``TaskRow`` per group over the pooled items of its
subtasks (the same paired measures as a task's), naming its subtasks; each subtask's row names
its group. McNemar p-values are then Holm-adjusted across the gated units (standalone tasks and
groups), and a subtask's within its group.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import replace

import numpy as np
import pandas as pd

from harness import causes, detectors, registry, stats
from harness.errors import RegressError
from harness.text import utf8
from harness.types import (
    DetectorRate,
    DriftValues,
    Generation,
    ProbeExample,
    ProbeRow,
    Record,
    Suite,
    TaskRow,
    TerminationStats,
    gated_units,
    is_correct,
)

BASE_COLUMNS = (
    "task",
    "item_id",
    "kind",
    "metric",
    "prompt",
    "target",
    "output_base",
    "output_cand",
    "answer_base",
    "answer_cand",
    "score_base",
    "score_cand",
    "correct_base",
    "correct_cand",
    "finish_base",
    "finish_cand",
    "ntok_base",
    "ntok_cand",
    "identical",
    "answer_changed",
    "flip",
)


def item_columns() -> tuple[str, ...]:
    """The item table's columns: ``BASE_COLUMNS``, then each registered detector's
    (``<name>_base``, ``<name>_cand`` and any further columns it adds)."""
    return (*BASE_COLUMNS, *(c for d in registry.detectors() for c in d.columns))


class CompareError(RegressError):
    """Base and candidate records cannot be paired."""


def _gate_score(r: Record, gate_metric: str | None) -> float:
    """The record's score under the task's gate metric (its own ``score`` when that is the one)."""
    if gate_metric is None or gate_metric == r.metric:
        return r.score
    try:
        return float(r.metrics[gate_metric])
    except KeyError:
        raise CompareError(
            f"task {r.task}: gate metric {gate_metric!r} is not among item {r.item_id}'s metrics "
            f"({', '.join(r.metrics) or 'none recorded'})"
        ) from None


def _frame(
    records: Sequence[Record], side: str, gate_metrics: Mapping[str, str] | None = None, several: bool = False
) -> pd.DataFrame:
    gm = gate_metrics or {}
    rows = {
        "task": [r.task for r in records],
        "item_id": [r.item_id for r in records],
        "item_hash": [r.item_hash for r in records],
        "prompt_hash": [r.prompt_hash for r in records],
        "kind": [r.kind for r in records],
        "metric": [gm.get(r.task) or r.metric for r in records],
        "prompt": [utf8(r.prompt) for r in records],
        "target": [utf8(r.target) for r in records],
        "output": [utf8(r.output) for r in records],
        "answer": [utf8(r.answer) for r in records],
        "score": np.array([_gate_score(r, gm.get(r.task)) for r in records], dtype=float),
        "finish": [r.finish or "" for r in records],
        "ntok": np.array([r.n_tokens for r in records], dtype=np.int64),
    }
    rows["tokens"] = [r.token_ids for r in records]  # for the detectors; not kept in the table
    if several:  # every metric of every filter, as the record holds them
        rows["metrics"] = [json.dumps(r.metrics, ensure_ascii=False) for r in records]
    df = pd.DataFrame(rows)
    if df.duplicated(["task", "item_id"]).any():
        dup = df[df.duplicated(["task", "item_id"])].iloc[0]
        raise CompareError(f"{side} records hold item {dup.task}/{dup.item_id} twice")
    keep = ["task", "item_id", "item_hash", "prompt_hash", "kind", "metric", "prompt", "target"]
    return df.rename(columns={c: f"{c}_{side}" for c in df.columns if c not in keep})


def pair(base: Sequence[Record], cand: Sequence[Record], suite: Suite | None = None) -> tuple[pd.DataFrame, list[str]]:
    """Join base and candidate on (task, item); return the item table and warnings.

    ``suite`` (optional) gives each task's gate metric and group."""
    specs = suite.tasks if suite is not None else ()
    gate_metrics = {t.name: t.gate_metric for t in specs if t.gate_metric}
    group_of = {t.name: t.group for t in specs if t.group}
    several = bool(gate_metrics) or any(len(r.metrics) > 1 for records in (base, cand) for r in records)
    b, c = _frame(base, "base", gate_metrics, several), _frame(cand, "cand", gate_metrics, several)
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
    m["correct_base"] = is_correct(m["score_base"])
    m["correct_cand"] = is_correct(m["score_cand"])
    m["identical"] = m["output_base"] == m["output_cand"]
    m["answer_changed"] = m["answer_base"] != m["answer_cand"]
    m["flip"] = np.where(
        m["correct_base"] & ~m["correct_cand"], "neg", np.where(~m["correct_base"] & m["correct_cand"], "pos", "")
    )
    m = add_flags(m)
    order = {t: i for i, t in enumerate(dict.fromkeys(r.task for r in base))}  # the suite's task order
    m = m.assign(_order=m["task"].map(order)).sort_values(["_order", "item_id"], kind="stable")
    columns = list(item_columns())
    if group_of:  # null for a standalone task
        m["group"] = [group_of.get(t) for t in m["task"]]
        columns.insert(1, "group")
    if several:
        columns += ["metrics_base", "metrics_cand"]
    return m[columns].reset_index(drop=True), warnings


def add_flags(items: pd.DataFrame) -> pd.DataFrame:
    """Each registered detector's columns, computed on the items of its kinds (other items:
    not flagged). A detector whose flags the table holds already is left as it is (any
    further column it lacks gets the detector's default), so an item table stored before a
    detector existed gets its columns here."""
    out = items.copy()
    for d in registry.detectors():
        if f"{d.name}_base" in items and f"{d.name}_cand" in items:
            for col, default in d.extra_columns.items():
                if col not in out:
                    out[col] = default
            continue
        mask = items["kind"].isin(d.kinds).to_numpy()
        flags = d.flag(items[mask])
        out[f"{d.name}_base"] = _scatter(mask, flags.base, False)
        out[f"{d.name}_cand"] = _scatter(mask, flags.cand, False)
        for col, default in d.extra_columns.items():
            out[col] = _scatter(mask, flags.extra[col], default)
    return out


def _scatter(mask: np.ndarray, values: Sequence[object] | np.ndarray, default: object) -> np.ndarray:
    """``values`` at the positions ``mask`` selects, ``default`` elsewhere."""
    out = np.full(len(mask), default, dtype=object if isinstance(default, str) else None)
    out[mask] = np.asarray(values, dtype=out.dtype)
    return out


def add_drift(
    items: pd.DataFrame,
    base: DriftValues,
    cand: DriftValues,
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


def _mean_or_none(vals: pd.Series) -> float | None:
    return float(vals.mean()) if len(vals) else None


def _task_row(name: str, g: pd.DataFrame) -> TaskRow:
    s = stats.paired_summary(g["correct_base"].to_numpy(), g["correct_cand"].to_numpy())
    gen = g[g["kind"] == "generate_until"]
    n_gen = len(gen)
    len_b, len_c = float(gen["ntok_base"].sum()), float(gen["ntok_cand"].sum())
    lost = _cause_counts(g)
    drift: dict[str, float | int | None] = {}
    for col in ("stop_drift", "answer_drift"):
        if col in g:
            vals = g[col].dropna()
            drift[f"{col}_mean"] = _mean_or_none(vals)
            drift[f"{col}_n"] = int(len(vals))
    return TaskRow(
        name=name,
        **s,  # type: ignore[arg-type]  # paired_summary's keys are TaskRow's accuracy fields
        mcnemar_p_holm=s["mcnemar_p"],  # adjusted across tasks by task_table
        identical_outputs=int(g["identical"].sum()),
        identity_rate=float(g["identical"].mean()) if len(g) else 1.0,
        answer_change_rate=float(g["answer_changed"].mean()) if len(g) else 0.0,
        n_generated=n_gen,
        rates=tuple(_rate(d, g) for d in registry.detectors()),
        length_ratio=(len_c / len_b) if len_b else (1.0 if not len_c else float("inf")),
        knowledge_lost=lost[0],
        format_lost=lost[1],
        **drift,  # type: ignore[arg-type]
    )


def _cause_counts(g: pd.DataFrame) -> tuple[int, int]:
    """Knowledge-lost and form-or-stop-lost items (``harness.causes``; 0 before causes are found)."""
    if "cause" not in g:
        return 0, 0
    return int((g["cause"] == causes.LOST).sum()), int(g["cause"].isin(causes.FORMAT_LOSS).sum())


def _rate(d: registry.Detector, g: pd.DataFrame) -> DetectorRate:
    """A detector's rates over the items of its kinds (0 where there are none)."""
    mine = g[g["kind"].isin(d.kinds)]
    n = len(mine)
    rate_b = float(mine[f"{d.name}_base"].mean()) if n else 0.0
    rate_c = float(mine[f"{d.name}_cand"].mean()) if n else 0.0
    return DetectorRate(d.name, rate_b, rate_c, n)


def task_table(items: pd.DataFrame) -> tuple[tuple[TaskRow, ...], TaskRow]:
    """Per-task rows (suite order preserved; McNemar p Holm-adjusted across the tasks) and
    the overall row over all items (its Holm p is its own). ``tables`` adds the group rows."""
    tasks, _, overall = tables(items)
    return tasks, overall


def groups_of(items: pd.DataFrame) -> dict[str, list[str]]:
    """Each group of the item table and its subtasks, in suite order (``{}`` without groups)."""
    if "group" not in items:
        return {}
    out: dict[str, list[str]] = {}
    for task, group in dict.fromkeys(zip(items["task"], items["group"])):
        if isinstance(group, str) and group:
            out.setdefault(group, []).append(task)
    return out


def _metric_name(g: pd.DataFrame) -> str | None:
    """The gate metric of these items, named where the table keeps several metrics per item."""
    if "metrics_base" not in g:
        return None
    return " / ".join(str(m) for m in dict.fromkeys(g["metric"])) or None


def tables(items: pd.DataFrame) -> tuple[tuple[TaskRow, ...], tuple[TaskRow, ...], TaskRow]:
    """Per-task rows, group rows and the overall row.

    A group's row pools the items of its subtasks (``groups_of``). McNemar p is
    Holm-adjusted across the gated units (standalone tasks and groups: a group counts once,
    however many subtasks it has) and, for a subtask, across its group's subtasks; without
    groups that is across the tasks, as ``task_table`` always did."""
    items = add_flags(items)  # an item table stored before a detector was registered
    names = list(dict.fromkeys(items["task"]))
    members = groups_of(items)
    group_of = {t: g for g, ts in members.items() for t in ts}
    clash = sorted(set(members) & set(names))
    if clash:
        raise CompareError(f"group {clash[0]!r} has the name of a task; a group and a task need different names")
    rows = {
        t: replace(_task_row(t, g), group=group_of.get(t), metric=_metric_name(g))
        for t, g in ((t, items[items["task"] == t]) for t in names)
    }
    groups = {}
    for name, subtasks in members.items():
        g = items[items["task"].isin(subtasks)]
        groups[name] = replace(_task_row(name, g), subtasks=tuple(subtasks), metric=_metric_name(g))
        for t, p in zip(subtasks, stats.holm([rows[t].mcnemar_p for t in subtasks])):
            rows[t] = replace(rows[t], mcnemar_p_holm=p)
    units = gated_units(tuple(rows.values()), tuple(groups.values()))
    for u, p in zip(units, stats.holm([u.mcnemar_p for u in units])):
        if u.name in groups:
            groups[u.name] = replace(u, mcnemar_p_holm=p)
        else:
            rows[u.name] = replace(u, mcnemar_p_holm=p)
    return tuple(rows[t] for t in names), tuple(groups.values()), _task_row("overall", items)


def termination_stats(gens: Sequence[Generation]) -> TerminationStats:
    """One checkpoint's termination-probe generations: stop, non-termination and loop
    rates, and output-length quantiles."""
    n = len(gens)
    lengths = sorted(g.n_tokens for g in gens)
    loops = [detectors.loop_of_output(g.token_ids, g.text) is not None for g in gens]
    nonterm = [detectors.is_nonterminated(g.finish) for g in gens]

    def q(p: float) -> float:
        return float(lengths[min(n - 1, int(p * (n - 1) + 0.5))]) if n else 0.0

    return TerminationStats(
        n=n,
        stop_rate=sum(not x for x in nonterm) / n if n else 1.0,
        nonterm_rate=sum(nonterm) / n if n else 0.0,
        loop_rate=sum(loops) / n if n else 0.0,
        length_p50=q(0.5),
        length_p90=q(0.9),
        length_max=float(lengths[-1]) if n else 0.0,
        lengths=tuple(lengths),
    )


def probe_row(base: Sequence[Generation], cand: Sequence[Generation]) -> ProbeRow | None:
    """The termination probe as a gated row (rates only; the probe has no accuracy)."""
    if not base or not cand:
        return None
    b, c = termination_stats(base), termination_stats(cand)
    return ProbeRow(
        name="probe:termination",
        n=b.n,
        n_generated=b.n,
        nonterm_rate_base=b.nonterm_rate,
        nonterm_rate_candidate=c.nonterm_rate,
        loop_rate_base=b.loop_rate,
        loop_rate_candidate=c.loop_rate,
        base=b,
        candidate=c,
        examples=tuple(
            ProbeExample(g.text[:2000], g.finish, g.n_tokens) for g in cand if detectors.is_nonterminated(g.finish)
        )[:10],
    )
