"""``regress trend --base B CKPT [CKPT ...]``: one report over many checkpoints of a run.

Each checkpoint is compared with the base exactly as ``regress compare`` would (records
reused from the store when present, so the base runs once), and the per-task accuracy,
negative flips, non-termination and drift are plotted against the training step, with
each checkpoint's verdict, so a user can pick the last checkpoint that still passes.

The step of a checkpoint is the last number in its folder name (``checkpoint-1200`` ->
1200) when all the names are alike apart from it, and checkpoints are ordered by it.
Otherwise (a ``final`` among them) the order is the one given on the command line, and
each checkpoint's position is its step. The newest checkpoint (exit 1 when it fails) is the
last in that order.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.types import Comparison, JsonObject, TaskRow


def nonterm_rate(t: TaskRow) -> float | None:
    """The candidate's non-termination rate (the registered ``nonterm`` detector's)."""
    r = t.rate("nonterm")
    return r.candidate if r else None


METRICS: tuple[tuple[Callable[[TaskRow], float | None], str], ...] = (
    (lambda t: t.acc_candidate, "accuracy"),
    (lambda t: t.nfr, "negative-flip rate"),
    (nonterm_rate, "non-termination rate"),
    (lambda t: t.stop_drift_mean, "stop-token drift (nats)"),
)


@dataclass(frozen=True)
class TrendPoint:
    """One checkpoint of the run: its step (or position), verdict and task rows."""

    path: str
    step: int
    verdict: str
    tasks: tuple[TaskRow, ...]
    overall: TaskRow


def point_to_dict(p: TrendPoint) -> JsonObject:
    """A point as trend.json and ``regress watch``'s state file store it (the overall row last)."""
    return {"path": p.path, "step": p.step, "verdict": p.verdict, "tasks": [t.to_dict() for t in (*p.tasks, p.overall)]}


def point_from_dict(d: Mapping[str, Any]) -> TrendPoint:
    """The inverse of ``point_to_dict`` (a non-finite number, stored as null, reads back as NaN)."""
    *tasks, overall = (row_from_dict(t) for t in d["tasks"])
    return TrendPoint(str(d["path"]), int(d["step"]), str(d["verdict"]), tuple(tasks), overall)


def row_from_dict(d: Mapping[str, Any]) -> TaskRow:
    """A task row as summary.json and trend.json store it (``TaskRow.from_dict``)."""
    return TaskRow.from_dict(d)


def points_of(paths: list[str], comparisons: list[Comparison]) -> tuple[list[TrendPoint], bool]:
    """One point per checkpoint (as named on the command line), ordered by step (stable:
    equal steps keep the order given); and whether the steps are training steps."""
    steps, by_step = steps_of(paths)
    # a group is one column, its pooled accuracy (Comparison.units); without groups, every task
    points = [TrendPoint(p, s, c.verdict.level, c.units, c.overall) for p, c, s in zip(paths, comparisons, steps)]
    return sorted(points, key=lambda p: p.step), by_step


def steps_of(paths: list[str]) -> tuple[list[int], bool]:
    """Each checkpoint's step, and whether they are training steps (else positions).

    Steps only when every folder name is the same apart from its last number
    (``checkpoint-500``, ``checkpoint-1000``): a ``final`` or ``llama3-8b-sft`` beside them
    carries no step, so all keep the order given.
    """
    names = [Path(p).name for p in paths]
    last = [list(re.finditer(r"\d+", n)) for n in names]
    if all(last):
        shapes = {n[: m[-1].start()] + "#" + n[m[-1].end() :] for n, m in zip(names, last)}
        if len(shapes) == 1:
            return [int(m[-1].group()) for m in last], True
    return list(range(len(paths))), False


def last_passing(points: list[TrendPoint]) -> TrendPoint | None:
    """The latest checkpoint such that it and every earlier one passed."""
    best = None
    for p in points:
        if p.verdict == "FAIL":
            break
        best = p
    return best


def _plot(points: list[TrendPoint], xlabel: str) -> str:
    from harness.report.plots import plt, to_data_uri

    names = [t.name for t in points[0].tasks] if points else []
    fig, axes = plt.subplots(1, len(METRICS), figsize=(4.2 * len(METRICS), 3.2))
    steps = [p.step for p in points]
    for ax, (value, label) in zip(axes, METRICS):
        for name in names:
            ys = [next((value(t) for t in p.tasks if t.name == name), None) for p in points]
            ys = [float("nan") if y is None else y for y in ys]
            ax.plot(steps, ys, marker="o", label=name)
        for p in points:
            if p.verdict == "FAIL":
                ax.axvspan(p.step - 0.5, p.step + 0.5, color="#ffd6d6", zorder=0)
        ax.set_title(label)
        ax.set_xlabel(xlabel)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return to_data_uri(fig)


def write_trend(base: str, points: list[TrendPoint], out: Path, xlabel: str = "step") -> None:
    from html import escape

    from harness.store import atomic_write

    out.mkdir(parents=True, exist_ok=True)
    best = last_passing(points)
    data = {
        "base": base,
        "last_passing": best.path if best else None,
        "ordered_by": xlabel,  # "step" (from the names) or "position given"
        "points": [point_to_dict(p) for p in points],
    }
    atomic_write(out / "trend.json", json.dumps(data, indent=2, default=str).encode())
    rows = "".join(
        f"<tr class='{p.verdict}'><td>{p.step}</td><td>{escape(p.path)}</td><td>{p.verdict}</td>"
        + "".join(f"<td>{t.acc_candidate:.3f}</td>" for t in p.tasks)
        + "</tr>"
        for p in points
    )
    heads = "".join(f"<th>{escape(t.name)}</th>" for t in points[0].tasks) if points else ""
    html = f"""<!doctype html><html><head><meta charset="utf-8"><title>regress trend</title>
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'">
<style>body{{font:14px system-ui,sans-serif;margin:1.5em}} td,th{{border:1px solid #ccc;padding:3px 7px}}
table{{border-collapse:collapse}} .FAIL{{background:#ffd6d6}} .WARN{{background:#fff1c2}}
.PASS{{background:#d4f4dd}}</style>
</head><body><h1>regress trend against {escape(base)}</h1>
<p id="last-passing">Last checkpoint that still passes: <b>{escape(best.path) if best else "none"}</b></p>
<img alt="trend" src="{_plot(points, xlabel)}">
<table><tr><th>{escape(xlabel)}</th><th>checkpoint</th><th>verdict</th>{heads}</tr>{rows}</table></body></html>"""
    atomic_write(out / "trend.html", html.encode())
