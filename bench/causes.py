"""Causes of forgetting on the demo (not a test): the knowledge probe's margin and its cost.

    python bench/causes.py [--limit 500] [--sections margin,causes,time]

* ``margin``: the knowledge probe on every item the base answered right (``--knowledge-probe
  all``) for ``ft-identical`` and ``ft-answer-only`` (fine-tunes that keep the base's
  knowledge: a byte copy, and one trained with replay): quantiles of the gold answer's
  log-likelihood change (candidate minus base, nats) per task; the margin
  (``causes.KNOWLEDGE_MARGIN``) must sit below what they show.
* ``causes``: lost items by cause for each planted fine-tune (ft-no-eos, ft-early-eot,
  ft-format, ft-overwrite) and the two above, with the share in the planted cause.
* ``time``: compares with a fresh store each (both checkpoints generated), with the probe
  on the lost items and with ``--knowledge-probe off`` (``--time-runs``), each timed end
  to end, and the probe stage alone; the ratios go into ``bench/RESULTS.md`` by hand.

Each section prints a Markdown table.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from harness import causes, knowledge, pipeline  # noqa: E402
from harness.config import RunConfig  # noqa: E402
from harness.demo.build import build_demo  # noqa: E402
from harness.demo.early_eot import build_early_eot  # noqa: E402
from harness.demo.planted import PLANTED, build_planted  # noqa: E402

PLANTED_CAUSE = {
    "ft-no-eos": {causes.RUNAWAY},
    "ft-early-eot": {causes.EMPTY, causes.CUT_SHORT},
    "ft-format": {causes.FORMAT, causes.UNPARSED},
    "ft-overwrite": {causes.LOST},
}


class Checkpoints(dict[str, Path]):
    """The demo checkpoints under ``out``, each built (or reused) only when a section asks for it."""

    def __init__(self, out: Path) -> None:
        super().__init__()
        self.out = out

    def __missing__(self, name: str) -> Path:
        if name == "ft-early-eot":
            path = build_early_eot(self.out)
        elif name in PLANTED:
            path = build_planted(self.out, name)
        else:
            path = build_demo(self.out)[name]
        self[name] = path
        return path


SUITE = ["demo"]  # --suite


def items_of(base: Path, cand: Path, store: Path, report: Path, limit: int, probe: str) -> pd.DataFrame:
    cfg = RunConfig(suite=SUITE[0], store_dir=str(store), limit=limit, knowledge_probe=probe)
    pipeline.run_comparison(pipeline.CompareRequest(str(base), str(cand), cfg, str(report)))
    return pd.read_parquet(report / "items.parquet")


def margin(paths: dict[str, Path], store: Path, tmp: Path, limit: int) -> None:
    print("\n| fine-tune | task | items | p1 | p5 | p50 | min | gold ranked first |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for ft in ("ft-identical", "ft-answer-only"):
        items = items_of(paths["base"], paths[ft], store, tmp / f"m-{ft}", limit, "all")
        for task, g in items[items["gold_ll_cand"].notna()].groupby("task", sort=False):
            d = (g["gold_ll_cand"] - g["gold_ll_base"]).to_numpy()
            q = np.quantile(d, [0.01, 0.05, 0.5])
            top = g["gold_top_cand"].mean()
            qs = " | ".join(f"{x:+.3f}" for x in (*q, d.min()))
            print(f"| {ft} | {task} | {len(d)} | {qs} | {top:.2f} |")


def cause_table(paths: dict[str, Path], store: Path, tmp: Path, limit: int) -> None:
    print("\n| fine-tune | lost | by cause | in the planted cause |")
    print("|---|---:|---|---:|")
    for ft in ("ft-identical", "ft-answer-only", *PLANTED_CAUSE):
        items = items_of(paths["base"], paths[ft], store, tmp / f"c-{ft}", limit, "lost")
        lost = items[items["cause"] != ""]
        n = causes.counts(lost["cause"])
        want = PLANTED_CAUSE.get(ft)
        share = f"{lost['cause'].isin(want).mean():.1%}" if want and len(lost) else "-"
        print(f"| {ft} | {len(lost)} | {', '.join(f'{k} {c}' for c, k in n.items())} | {share} |")


def timing(paths: dict[str, Path], tmp: Path, limit: int, ft: str, runs: list[str]) -> None:
    spent: list[float] = []
    real = knowledge.probe

    def timed(*a, **k):  # type: ignore[no-untyped-def]
        t0 = time.perf_counter()
        try:
            return real(*a, **k)
        finally:
            spent.append(time.perf_counter() - t0)

    knowledge.probe = timed  # type: ignore[assignment]
    rows = []
    for i, probe in enumerate(runs):
        t0 = time.perf_counter()
        items = items_of(paths["base"], paths[ft], tmp / f"s-{probe}-{i}", tmp / f"t-{i}", limit, probe)
        took = time.perf_counter() - t0
        rows.append((probe, took, spent.pop() if probe != "off" else 0.0, int((items["flip"] == "neg").sum())))
    knowledge.probe = real  # type: ignore[assignment]
    print(f"\n{ft}, --limit {limit}, fresh store per run (both checkpoints generated)\n")
    print("| --knowledge-probe | compare | probe stage | lost items | compare / (compare - probe) |")
    print("|---|---:|---:|---:|---:|")
    for probe, t, tp, n in rows:
        print(f"| {probe} | {t:.1f} s | {tp:.2f} s | {n} | {t / (t - tp):.3f} |")
    best = {p: min(t for q, t, _, _ in rows if q == p) for p in ("off", "lost") if p in runs}
    if len(best) == 2:
        print(f"| ratio lost/off (best of each) | {best['lost'] / best['off']:.3f} | | | |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=int, default=500)
    ap.add_argument("--suite", default="demo")
    ap.add_argument("--demo", default=str(REPO / ".cache" / "demo"), help="the demo checkpoints' folder")
    ap.add_argument("--sections", default="margin,causes,time")
    ap.add_argument("--time-ft", default="ft-overwrite")
    ap.add_argument("--time-runs", default="off,lost,off,lost", help="compares timed, in order")
    a = ap.parse_args()
    SUITE[0] = a.suite
    paths = Checkpoints(Path(a.demo))
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        store = tmp / "store"
        sections = a.sections.split(",")
        if "margin" in sections:
            margin(paths, store, tmp, a.limit)
        if "causes" in sections:
            cause_table(paths, store, tmp, a.limit)
        if "time" in sections:
            timing(paths, tmp, a.limit, a.time_ft, a.time_runs.split(","))


if __name__ == "__main__":
    main()
