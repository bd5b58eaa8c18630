"""Drafting from the base's stored answers (issue 22 items 1-3; not a test).

    python bench/drafts.py [--backends hf,vllm] [--limit 100] [--candidates copy,ft-answer-only,ft-all-tokens]
    python bench/drafts.py --real [--limit 8] [--tasks gsm8k,ifeval,bbh_zeroshot_logical_deduction_three_objects]
                           [--termination]

On the demo checkpoints, per backend: the base is run once into a store; then, for each
candidate, ``regress compare`` (a whole process: candidate run, drift probes, comparison,
report) with the base stored, drafting off (``--no-drafts``) and on, alternating, each on
a fresh copy of the base's store. ``copy`` is the base under another fingerprint (its
answers are all the base's). The demo suite without its termination probe, ``--limit``
items per task. Reports both times, the speed-up, and the drafted / resumed / generated
counts from summary.json; checks that the two runs' items.parquet are equal. Targets:
>= 3x where >= 90% of items are identical; ft-all-tokens (most items diverge early)
costs at most 10% more. Appends to bench/RESULTS.md.

``--real``: the same on the real demo (SmolLM2-135M-Instruct and its real fine-tunes,
``.cache/demo/real``), on ``--tasks`` of suite ``real`` (generation tasks with long
answers, where generation is most of a comparison's time; drift on, no termination probe
unless ``--termination``: suite real's, as the real demo runs it).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
from throughput import ENV, machine, record  # noqa: E402


def write_real_suite(folder: Path, tasks: list[str], termination: bool = False) -> str:
    """Suite real's ``tasks``, without its termination probe unless ``termination``."""
    import yaml

    raw = yaml.safe_load((REPO / "suites" / "real.yaml").read_text())
    if not termination:
        raw["probes"].pop("termination", None)
    else:
        raw["probes"]["termination"]["prompts"] = str(REPO / "suites" / raw["probes"]["termination"]["prompts"])
    raw.update(name="bench-drafts-real", tasks=tasks, task_dirs=[str(REPO / "suites" / d) for d in raw["task_dirs"]],
               data=str((REPO / "suites" / raw["data"]).resolve()))  # fmt: skip
    raw.pop("metrics", None)
    path = folder / "bench-drafts-real.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def write_suite(folder: Path) -> str:
    import yaml

    raw = yaml.safe_load((REPO / "suites" / "demo.yaml").read_text())
    raw["probes"].pop("termination", None)
    raw.update(name="bench-drafts", task_dirs=[str(REPO / "suites" / d) for d in raw["task_dirs"]])
    path = folder / "bench-drafts.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


DRIFT = ["stop_drift", "answer_drift"]


def same_items(a, b) -> bool:  # noqa: ANN001 - two pandas frames
    """items.parquet equal, drift to float noise (with drafting it is read from the verify
    pass, computed in another batch)."""
    import numpy as np

    from harness.probes import DRIFT_NOISE

    close = all(np.allclose(a[c], b[c], atol=DRIFT_NOISE, equal_nan=True) for c in DRIFT)
    return a.drop(columns=DRIFT).equals(b.drop(columns=DRIFT)) and close


def drift_gap(a, b) -> float:  # noqa: ANN001 - two pandas frames
    """The largest difference between two runs' drift values (nats)."""
    import numpy as np

    gaps = [np.nanmax(np.abs(a[c].to_numpy(float) - b[c].to_numpy(float)), initial=0.0) for c in DRIFT]
    return float(max(gaps))


def regress(args: list[str]) -> float:
    env = {**os.environ, **ENV, "PYTHONPATH": str(REPO)}
    t = time.perf_counter()
    p = subprocess.run(
        [str(REPO / ".venv" / "bin" / "regress"), *args], cwd=REPO, env=env, capture_output=True, text=True
    )
    took = time.perf_counter() - t
    if p.returncode not in (0, 1):  # 1: a FAIL verdict
        raise SystemExit(f"regress {args[:1]} failed ({p.returncode}): {p.stderr[-3000:]}")
    return took


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backends", default="hf,vllm")
    ap.add_argument("--limit", type=int, default=100)
    ap.add_argument("--candidates", default="copy,ft-answer-only,ft-all-tokens")
    ap.add_argument("--no-append", action="store_true")
    ap.add_argument("--real", action="store_true", help="SmolLM2 and its real fine-tunes")
    ap.add_argument("--tasks", default="gsm8k,ifeval,bbh_zeroshot_logical_deduction_three_objects")
    ap.add_argument("--termination", action="store_true", help="with --real: keep suite real's termination probe")
    a = ap.parse_args()
    import pandas as pd

    if a.real:
        from harness.demo.real import build_real

        demo = build_real(REPO / ".cache" / "demo" / "real", ("ft-answer-only", "ft-all-tokens"))
    else:
        from harness.demo.build import build_demo

        demo = build_demo(REPO / ".cache" / "demo")
    rows: list[list[str]] = []
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="regress-bench-drafts-") as d:
        tmp = Path(d)
        suite = write_real_suite(tmp, a.tasks.split(","), a.termination) if a.real else write_suite(tmp)
        copy = tmp / "copy"
        shutil.copytree(demo["base"], copy)
        (copy / "config.json").write_text((copy / "config.json").read_text() + "\n")  # another fingerprint
        paths = {**demo, "copy": copy}
        for backend in a.backends.split(","):
            common = ["--suite", suite, "--limit", str(a.limit), "--backend", backend]
            base_store = tmp / f"base-{backend}"
            regress(["run", "--model", str(demo["base"]), *common, "--store", str(base_store)])
            for name in a.candidates.split(","):
                took, summaries, items = {}, {}, {}
                for mode in ("off", "on"):
                    store, out = tmp / f"s-{backend}-{name}-{mode}", tmp / f"r-{backend}-{name}-{mode}"
                    shutil.copytree(base_store, store)
                    flags = ["--no-drafts"] if mode == "off" else []
                    flags += ["--allow-no-effect"] if name == "copy" else []  # the base's answers, by design
                    took[mode] = regress(["compare", "--base", str(demo["base"]), "--model", str(paths[name]), *common,
                                          "--store", str(store), "--out", str(out), *flags])  # fmt: skip
                    summaries[mode] = json.loads((out / "summary.json").read_text())
                    items[mode] = pd.read_parquet(out / "items.parquet")
                gap = drift_gap(items["off"], items["on"])
                same = (
                    same_items(items["off"], items["on"]) and summaries["off"]["verdict"] == summaries["on"]["verdict"]
                )
                c = summaries["on"].get("drafting", {})
                n = c.get("drafted", 0) + c.get("resumed", 0) + c.get("generated", 0)
                counts = (f"{c.get('drafted', 0)}/{c.get('resumed', 0)}/{c.get('generated', 0)} of {n}, "
                          f"{c.get('tokens_saved', 0):,} tokens saved")  # fmt: skip
                rows.append([backend, name, f"{took['off']:.1f} s", f"{took['on']:.1f} s",
                             f"{took['off'] / took['on']:.2f}x", counts,
                             ("yes" if same else "NO") + f" (drift within {gap:.0e})"])  # fmt: skip
                print(rows[-1], flush=True)
    header = ["backend", "candidate", "drafting off", "drafting on", "speed-up", "drafted/resumed/generated", "same"]
    where = f"SmolLM2-135M-Instruct, tasks {a.tasks} of suite real" if a.real else "demo suite"
    intro = (f"bench/drafts.py{' --real' if a.real else ''} --limit {a.limit}: `regress compare` with the base "
             f"stored, whole process, {where}, {'with' if a.termination else 'without'} the termination probe; "
             f"{time.perf_counter() - t_all:.0f} s "
             "in all. 'same': items.parquet (drift to 1e-4 nats) and verdict equal.")  # fmt: skip
    what = "SmolLM2" if a.real else "the demo"
    record(f"drafting from the stored base, {what}, {machine()}", intro, header, rows, not a.no_append)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
