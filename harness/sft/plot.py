"""``tokens.png``: histograms of per-example key share and of assistant-token probabilities."""

from __future__ import annotations

from pathlib import Path

from harness.sft.records import Audit


def plot(a: Audit, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    left.hist([s.key_share for s in a.examples], bins=20, range=(0, 1), color="#4C72B0")
    left.set_xlabel("key share of an example's assistant tokens")
    left.set_ylabel("examples")
    key = [t.prob for s in a.examples for t in s.tokens if t.key]
    known = [t.prob for s in a.examples for t in s.tokens if not t.key]
    right.hist([known, key], bins=20, range=(0, 1), stacked=True, color=["#55A868", "#C44E52"],
               label=["not key (the base produces it)", "key"])  # fmt: skip
    right.set_xlabel("base probability of each assistant token")
    right.set_ylabel("tokens")
    right.set_yscale("log")
    right.legend(fontsize=8)
    fig.suptitle(f"{Path(a.data).name} under {Path(a.base).name}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=96)
    plt.close(fig)
