"""Plots for the report, rendered with matplotlib (Agg) to embedded PNG data URIs."""

from __future__ import annotations

import base64
import io
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

BASE_COLOR, CAND_COLOR = "#4C72B0", "#DD8452"


def to_data_uri(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=96, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def accuracy_plot(tasks: list[dict[str, Any]]) -> str:
    """Accuracy of base and candidate per task, with Wilson 95% intervals."""
    rows = [t for t in tasks if t["name"] != "overall"]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(4.5, 1.1 * len(rows) + 2), 3.2))
    for off, side, color, label in ((-0.2, "base", BASE_COLOR, "base"), (0.2, "candidate", CAND_COLOR, "candidate")):
        acc = np.array([t[f"acc_{side}"] for t in rows])
        lo = np.array([t.get(f"acc_{side}_lo", a) for t, a in zip(rows, acc)])
        hi = np.array([t.get(f"acc_{side}_hi", a) for t, a in zip(rows, acc)])
        ax.bar(x + off, acc, 0.4, color=color, label=label)
        ax.errorbar(x + off, acc, yerr=[acc - lo, hi - acc], fmt="none", ecolor="black", capsize=3, lw=1)
    ax.set_xticks(x, [t["name"] for t in rows], rotation=20, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("accuracy")
    ax.set_title("Accuracy per task (95% Wilson intervals)")
    ax.legend(loc="lower right", fontsize=8)
    return to_data_uri(fig)
