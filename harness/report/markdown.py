"""``report.md``: verdict, a per-task table and the top flipped items, for a PR comment.

    text = render_markdown(cmp)

Bounded for any suite size: at most ``MAX_REASONS`` fired rules, ``MAX_TASKS`` task rows
(the tasks that fired first, then the largest drops) and ``MAX_FLIPS`` flipped items, each
cell cut to a few dozen characters, so the comment stays under ~60 lines and well under
GitHub's 64 KB comment limit (``MAX_BYTES`` is a hard stop). Everything whole lives in
report.html, summary.json and items.parquet.

A group (``Comparison.groups``) is one row, its pooled measures, with its flagged subtasks
(a rule fired) listed under it, at most ``MAX_SUBTASKS``, and a line counting the rest; a
``metric`` column names each row's gating metric where the suite has a choice of metrics.

Model outputs, targets and item ids are untrusted: they only appear inside inline code
spans (no links, images, HTML or @mentions render there), with backticks replaced, pipes
escaped for the table, newlines and other invisible or control characters (bidi
overrides included) made visible or replaced.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from harness import causes, registry
from harness.text import pct
from harness.types import Comparison, TaskRow

MAX_REASONS = 8
MAX_TASKS = 15
MAX_SUBTASKS = 5  # flagged subtasks listed under their group's row
MAX_FLIPS = 8
MAX_WHY = 3  # failing units whose lost items are broken down by cause (report.html has them all)
MAX_CELL = 60
MAX_LINE = 400
MAX_BYTES = 60_000
_ICON = {"PASS": "✅", "WARN": "⚠️", "FAIL": "❌"}
_RANK = {"FAIL": 0, "WARN": 1, "PASS": 2}


def _printable(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\n", "⏎").replace("\t", " ")
    return "".join(ch if ch.isprintable() else "\ufffd" for ch in text)


def _code(s: object, limit: int = MAX_CELL) -> str:
    """Untrusted text as one inline code span that is safe in a table cell."""
    raw = "" if s is None else str(s)
    cut = _printable(raw[: limit + 1])
    cut = cut[:limit] + ("…" if len(cut) > limit else "")
    if not cut.strip():
        return "(empty)" if not cut else "(blank)"
    # No backslash escapes work inside a code span, except that a GFM table splits cells
    # on unescaped pipes before inline parsing: `\|` there is a literal pipe.
    return "`" + cut.replace("`", "ˋ").replace("|", "\\|") + "`"


def _line(s: str) -> str:
    return s if len(s) <= MAX_LINE else s[: MAX_LINE - 1] + "…"


def _task_levels(cmp: Comparison) -> dict[str, str]:
    levels: dict[str, str] = {}
    for r in cmp.verdict.results:
        if r.fired and _RANK[r.severity] < _RANK[levels.get(r.task, "PASS")]:
            levels[r.task] = r.severity
    return levels


def _task_row(t: TaskRow, level: str, metric: bool = False, prefix: str = "") -> str:
    name = "**overall**" if level == "" else _code(t.name, 40)
    if t.subtasks:
        name += f" (group of {len(t.subtasks)})"
    metric_cell = f" {_code(t.metric, 40) if t.metric else ''} |" if metric else ""
    rates = [t.rate(d.name) for d in registry.detectors()]  # one column per registered detector
    return (
        f"| {prefix}{_ICON.get(level, '')} {name} |{metric_cell} {t.n} | "
        f"{pct(t.acc_base)} | {pct(t.acc_candidate)} | "
        f"{100 * t.delta:+.1f} [{100 * t.delta_lo:+.1f}, {100 * t.delta_hi:+.1f}] | "
        f"{t.negative_flips} | {t.positive_flips} | {pct(t.identity_rate)} |"
        + "".join(f" {pct(r.base)}→{pct(r.candidate)} |" if r else " n/a |" for r in rates)
    )


def _task_table(cmp: Comparison, levels: dict[str, str]) -> list[str]:
    subtasks: dict[str, list[TaskRow]] = {}
    for t in cmp.tasks:
        if t.group is not None:
            subtasks.setdefault(t.group, []).append(t)

    def level(t: TaskRow) -> str:  # a group shows the worst of its own rules and its subtasks'
        own = [levels.get(t.name, "PASS")] + [levels.get(s.name, "PASS") for s in subtasks.get(t.name, [])]
        return min(own, key=_RANK.__getitem__)

    tasks = sorted(cmp.units, key=lambda t: (_RANK[level(t)], t.delta))
    metric = any(t.metric for t in (*cmp.tasks, *cmp.groups))
    header = [
        "task", *(["metric"] if metric else []), "n", "acc base", "acc cand", "Δ pts (95% CI)", "−flips", "+flips",
        "identical", *(d.column for d in registry.detectors()),
    ]  # fmt: skip
    right = {"n", "acc base", "acc cand", "−flips", "+flips", "identical"}  # numbers: right-aligned
    blank = " |" * (len(header) - 1)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" if h in right else "---" for h in header) + "|"]
    for t in tasks[:MAX_TASKS]:
        lines.append(_task_row(t, levels.get(t.name, "PASS"), metric))
        subs = subtasks.get(t.name, []) if t.subtasks else []
        flagged = sorted((s for s in subs if s.name in levels), key=lambda s: (_RANK[levels[s.name]], s.delta))
        lines += [_task_row(s, levels[s.name], metric, prefix="↳ ") for s in flagged[:MAX_SUBTASKS]]
        if len(subs) > min(len(flagged), MAX_SUBTASKS):
            more = len(subs) - min(len(flagged), MAX_SUBTASKS)
            n_flagged = max(len(flagged) - MAX_SUBTASKS, 0)
            lines.append(f"| ↳ … {more} {'more ' if flagged else ''}subtasks of {_code(t.name, 40)} "
                         f"({n_flagged} flagged); see report.html |{blank}")  # fmt: skip
    if len(tasks) > MAX_TASKS:
        rest = tasks[MAX_TASKS:]
        n_fired = sum(1 for t in rest if level(t) != "PASS")
        lines.append(f"| … {len(rest)} more tasks ({n_fired} with a rule fired); see report.html |{blank}")
    lines.append(_task_row(cmp.overall, "", metric))
    return lines


def _top_flips(cmp: Comparison, levels: dict[str, str]) -> list[str]:
    neg = np.flatnonzero(cmp.items["flip"].to_numpy() == "neg")  # positions; no text copied
    if not neg.size:
        return []
    # Round-robin over tasks, the tasks that fired first, so one task cannot fill the list.
    tasks = pd.Series(cmp.items["task"].to_numpy()[neg])
    order = np.lexsort((tasks.map(lambda t: _RANK[levels.get(t, "PASS")]).to_numpy(), tasks.groupby(tasks).cumcount()))
    top = cmp.items.iloc[neg[order[:MAX_FLIPS]]]
    lines = [
        "",
        f"**Top negative flips** ({neg.size} right→wrong in all; every item in report.html)",
        "",
        "| task | item | target | base | candidate | finish | cause |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in top.itertuples():
        lines.append(
            f"| {_code(r.task, 30)} | {_code(r.item_id, 30)} | {_code(r.target, 30)} | {_code(r.output_base)} | "
            f"{_code(r.output_cand)} | {_code(r.finish_base or '-', 8)}→{_code(r.finish_cand or '-', 8)} | "
            f"{getattr(r, 'cause', '') or '-'} |"
        )
    return lines


def _why(cmp: Comparison) -> list[str]:
    """Why it forgot: lost items by cause for each failing unit, each cause's remedy."""
    units = causes.failing_units(cmp.verdict.results, cmp.verdict.level)
    why, remedies = causes.explain(cmp.items, units[:MAX_WHY])
    if not why:
        return []
    head = ["", "**Why it forgot** (lost items by cause; harness/causes.py)", ""]
    more = [f"- … and {len(units) - MAX_WHY} more (report.html, summary.json)"] if len(units) > MAX_WHY else []
    lines = [*(_line(f"- {_code(x, 300)}") for x in why), *more]
    return [*head, *lines, *(f"- *{c}*: {r}" for c, r in remedies.items())]


def render_markdown(cmp: Comparison) -> str:
    v = cmp.verdict
    levels = _task_levels(cmp)
    lines = [
        f"## regress: {_ICON[v.level]} {v.level}",
        "",
        f"candidate {_code(cmp.candidate.path, 80)} ({_code(cmp.candidate.fingerprint, 20)}) vs base "
        f"{_code(cmp.base.path, 80)} ({_code(cmp.base.fingerprint, 20)}) · suite {_code(cmp.suite, 40)} · "
        f"backend {_code(cmp.backend, 20)}",
        "",
    ]
    if cmp.drafting is not None:  # how the candidate's answers were made (harness.drafts)
        lines += [f"drafting from the base's answers: {cmp.drafting.line()}", ""]
    for w in cmp.warnings[:3]:
        lines.append(_line(f"> ⚠️ {_code(w, 300)}"))
    if cmp.warnings:
        lines.append("")
    if v.reasons:
        lines += [f"**Rules that fired** ({len(v.reasons)})", ""]
        fired = [r for r in v.results if r.fired]
        fired.sort(key=lambda r: _RANK[r.severity])
        lines += [_line(f"- **{r.severity}** {_code(r.task, 40)} `{r.rule}`: {r.message}") for r in fired[:MAX_REASONS]]
        if len(fired) > MAX_REASONS:
            lines.append(f"- … and {len(fired) - MAX_REASONS} more (summary.json, junit.xml)")
        lines.append("")
    lines += _task_table(cmp, levels)
    lines += _why(cmp)
    lines += _top_flips(cmp, levels)
    text = "\n".join(lines) + "\n"
    if len(text.encode("utf-8")) > MAX_BYTES:  # cannot happen with the caps above; a hard stop
        text = text.encode("utf-8")[:MAX_BYTES].decode("utf-8", "ignore") + "\n\n… (cut; see report.html)\n"
    return text
