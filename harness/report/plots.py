"""Plots for the report, rendered with matplotlib (Agg) to embedded PNG data URIs.

Each function takes the comparison's ``TaskRow``s (``compare.task_table``) or its item frame
(``compare.item_columns()``) and returns a ``data:image/png;base64,...`` string, or None
where there is nothing to plot (no generated items, no stop-drift column)::

    uri = plots.accuracy_plot(cmp.tasks)
    uri = plots.lengths_plot(cmp.items)      # None without generate_until items

Per-task plots are horizontal bar charts, so any number of task names stays readable.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Callable, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import FuncFormatter, NullFormatter  # noqa: E402

from harness.registry import Detector  # noqa: E402
from harness.types import TaskRow  # noqa: E402

BASE_COLOR, CAND_COLOR = "#4C72B0", "#DD8452"
NEG_COLOR, POS_COLOR = "#C44E52", "#55A868"
# harness.causes.CAUSES in order: stop losses (reds), format losses (ambers), knowledge kept (green),
# knowledge lost (dark), unprobed wrong answers (grey)
CAUSE_COLORS = ("#8C1C13", "#C44E52", "#E07A5F", "#F2CC8F", "#E9A03B", "#55A868", "#3D405B", "#B0B0B0")
_DPI = 96
_MAX_LABEL = 28


def to_data_uri(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


Rates = Callable[[TaskRow], tuple[float, float]]  # a row's (base, candidate) pair of one measure


def _label(name: Any) -> str:
    s = "".join(ch if ch.isprintable() else "?" for ch in str(name))
    return s if len(s) <= _MAX_LABEL else s[: _MAX_LABEL - 1] + "…"


def _num(x: Any, default: float = 0.0) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return default
    return v if np.isfinite(v) else default


def _per_task_axes(n: int, ncols: int = 1, width: float = 6.4) -> tuple[Any, Any]:
    height = 1.5 + 0.42 * max(n, 1)
    return plt.subplots(1, ncols, figsize=(width * ncols, height), squeeze=False, layout="constrained")


def _legend(fig: Any, ax: Any) -> None:
    """A legend under the plot, clear of the bars."""
    fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncol=2, fontsize=8, frameon=False)


def _paired_bars(ax: Any, rows: Sequence[TaskRow], rates: Rates, pct: bool = True) -> None:
    """Base and candidate bars per task (top to bottom in suite order)."""
    y = np.arange(len(rows))
    scale = 100.0 if pct else 1.0
    for side, off, color, label in ((0, -0.2, BASE_COLOR, "base"), (1, 0.2, CAND_COLOR, "candidate")):
        v = np.array([_num(rates(t)[side]) * scale for t in rows])
        ax.barh(y + off, v, 0.4, color=color, label=label)
    ax.set_yticks(y, [_label(t.name) for t in rows])
    ax.invert_yaxis()
    ax.grid(axis="x", alpha=0.3)


def accuracy_plot(rows: Sequence[TaskRow]) -> str:
    """Accuracy of base and candidate per task, with Wilson 95% intervals."""
    fig, axes = _per_task_axes(len(rows))
    ax = axes[0][0]
    y = np.arange(len(rows))
    sides = (
        (-0.2, BASE_COLOR, "base", [(t.acc_base, t.acc_base_lo, t.acc_base_hi) for t in rows]),
        (0.2, CAND_COLOR, "candidate", [(t.acc_candidate, t.acc_candidate_lo, t.acc_candidate_hi) for t in rows]),
    )
    for off, color, label, vals in sides:
        acc = np.array([_num(v[0]) for v in vals])
        lo = np.array([_num(v[1], a) for v, a in zip(vals, acc)])
        hi = np.array([_num(v[2], a) for v, a in zip(vals, acc)])
        ax.barh(y + off, acc, 0.4, color=color, label=label)
        err = [np.maximum(acc - lo, 0), np.maximum(hi - acc, 0)]
        ax.errorbar(acc, y + off, xerr=err, fmt="none", ecolor="black", capsize=3, lw=1)
    ax.set_yticks(y, [_label(t.name) for t in rows])
    ax.invert_yaxis()
    ax.set_xlim(0, 1.02)
    ax.set_xlabel("accuracy")
    ax.grid(axis="x", alpha=0.3)
    ax.set_title("Accuracy per task (95% Wilson intervals)")
    _legend(fig, ax)
    return to_data_uri(fig)


def flips_plot(rows: Sequence[TaskRow]) -> str:
    """Negative (right -> wrong, drawn left) and positive flips (drawn right) per task."""
    fig, axes = _per_task_axes(len(rows))
    ax = axes[0][0]
    y = np.arange(len(rows))
    neg = np.array([t.negative_flips for t in rows])
    pos = np.array([t.positive_flips for t in rows])
    ax.barh(y, -neg, 0.6, color=NEG_COLOR, label="negative (right → wrong)")
    ax.barh(y, pos, 0.6, color=POS_COLOR, label="positive (wrong → right)")
    lim = max(int(neg.max(initial=0)), int(pos.max(initial=0)), 1) * 1.25
    for yi, n, p in zip(y, neg, pos):
        if n:
            ax.text(-n, yi, f"{n} ", va="center", ha="right", fontsize=8)
        if p:
            ax.text(p, yi, f" {p}", va="center", ha="left", fontsize=8)
    ax.set_xlim(-lim, lim)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(y, [_label(t.name) for t in rows])
    ax.invert_yaxis()
    ax.set_xlabel("items")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{abs(v):g}"))
    ax.grid(axis="x", alpha=0.3)
    ax.set_title("Flipped items per task")
    _legend(fig, ax)
    return to_data_uri(fig)


def causes_plot(items: pd.DataFrame, rows: Sequence[TaskRow]) -> str | None:
    """Lost items (negative flips) per task, stacked by cause (``harness.causes``); None
    where nothing was lost."""
    from harness import causes

    found = causes.unit_counts(items, [t.name for t in rows])
    if not found:
        return None
    names = list(found)
    fig, axes = _per_task_axes(len(names))
    ax = axes[0][0]
    y = np.arange(len(names))
    left = np.zeros(len(names))
    for cause, color in zip(causes.CAUSES, CAUSE_COLORS):
        n = np.array([found[t].get(cause, 0) for t in names], dtype=float)
        if n.any():
            ax.barh(y, n, 0.6, left=left, color=color, label=cause)
            left += n
    for yi, total in zip(y, left):
        ax.text(total, yi, f" {int(total)}", va="center", ha="left", fontsize=8)
    ax.set_xlim(0, max(float(left.max()), 1.0) * 1.15)
    ax.set_yticks(y, [_label(t) for t in names])
    ax.invert_yaxis()
    ax.set_xlabel("lost items (right → wrong)")
    ax.grid(axis="x", alpha=0.3)
    ax.set_title("Lost items by cause")
    _legend(fig, ax)
    return to_data_uri(fig)


def degeneration_plot(tasks: Sequence[TaskRow], detectors: Sequence[Detector]) -> str | None:
    """One panel per registered detector (its ``plot`` title): its rate per task, base vs candidate."""
    rows = [t for t in tasks if t.n_generated]
    if not rows or not detectors:
        return None
    fig, axes = _per_task_axes(len(rows), ncols=len(detectors), width=4.2)
    for i, d in enumerate(detectors):
        ax = axes[0][i]

        def rates(t: TaskRow, name: str = d.name) -> tuple[float, float]:
            r = t.rate(name)
            return (r.base, r.candidate) if r else (0.0, 0.0)

        _paired_bars(ax, rows, rates)
        top = max(max(_num(r) for t in rows for r in rates(t)) * 100, 1.0)
        ax.set_xlim(0, min(100.0, top * 1.2) if top < 80 else 102)
        ax.set_xlabel("% of generated outputs")
        ax.set_title(d.plot, fontsize=10)
        if i:
            ax.set_yticklabels([])
    _legend(fig, axes[0][0])
    return to_data_uri(fig)


def lengths_plot(items: pd.DataFrame) -> str | None:
    """Distribution of generated tokens per output (generate_until items), both sides."""
    gen = items[items["kind"] == "generate_until"]
    if not len(gen):
        return None
    b = pd.to_numeric(gen["ntok_base"], errors="coerce").dropna().to_numpy(dtype=float)
    c = pd.to_numeric(gen["ntok_cand"], errors="coerce").dropna().to_numpy(dtype=float)
    both = np.concatenate([b, c])
    if not len(both):
        return None
    top = max(float(both.max()), 1.0)
    bins = np.linspace(0, top + 1, min(50, int(top) + 2))
    fig, ax = plt.subplots(figsize=(6.4, 3.2), layout="constrained")
    for v, color, label in ((b, BASE_COLOR, "base"), (c, CAND_COLOR, "candidate")):
        med = float(np.median(v)) if len(v) else float("nan")
        counts, _ = np.histogram(v, bins=bins)
        ax.stairs(counts, bins, fill=True, color=color, alpha=0.3)
        ax.stairs(counts, bins, color=color, lw=1.5, label=f"{label} (median {med:g})")
    ax.set_yscale("log")
    ax.set_ylim(bottom=0.7)
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("generated tokens per output")
    ax.set_ylabel("outputs (log scale)")
    ax.set_title(f"Output length, {len(gen)} generated items")
    ax.legend(fontsize=8, framealpha=0.9)
    ax.grid(alpha=0.3)
    return to_data_uri(fig)


def stop_drift_plot(items: pd.DataFrame, column: str = "stop_drift") -> str | None:
    """Histogram of per-item stop-token drift (candidate minus base log P(end-of-turn))."""
    if column not in items.columns:
        return None
    v = pd.to_numeric(items[column], errors="coerce").to_numpy(dtype=float)
    v = v[np.isfinite(v)]
    if not len(v):
        return None
    fig, ax = plt.subplots(figsize=(6.4, 3.2), layout="constrained")
    ax.hist(v, bins=min(60, max(10, int(np.sqrt(len(v))))), color=CAND_COLOR, alpha=0.8)
    ax.axvline(0, color="black", lw=1)
    mean = float(v.mean())
    ax.axvline(mean, color=NEG_COLOR if mean < 0 else POS_COLOR, lw=1.5, ls="--", label=f"mean {mean:+.2f} nats")
    ax.set_xlabel("Δ log P(end-of-turn) after the base's answer, candidate − base (nats)")
    ax.set_ylabel("items")
    ax.set_title(f"Stop-token drift, {len(v)} items")
    ax.legend(fontsize=8, framealpha=0.9)
    ax.grid(alpha=0.3)
    return to_data_uri(fig)
