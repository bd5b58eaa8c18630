"""The drafting margin threshold, measured (issue 22 item 2; not a test).

    python bench/draft_threshold.py [--backends hf,vllm] [--limit 100] [--thresholds 0,0.01,0.5]
    python bench/draft_threshold.py --real [--limit 8] [--tasks gsm8k,truthfulqa_gen,real_veltan] [--termination]

On the demo checkpoints (demo suite without its termination probe, ``--limit`` items per
task), per backend: the base once, then each fine-tune (and ``copy``, the base under another
fingerprint) with ``--verify-drafts`` at each margin threshold (``harness.drafts.THRESHOLD``
set in-process): every answer is generated in full as well, and the drafted or resumed
answers that differ from full generation are counted. Threshold 0 shows what exactness
rests on without the guard; the chosen threshold what the guard costs (items generated in
full because of a near tie). Appends the table to bench/RESULTS.md. The threshold is set for
every precision (``THRESHOLD`` and ``THRESHOLD_FP32``). ``--real``: SmolLM2-135M-Instruct,
its copy under another fingerprint and its real fine-tunes on ``--tasks`` of suite real
(``--termination``: with suite real's termination probe, as the real demo runs it).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
from throughput import ENV, machine, record  # noqa: E402

FINE_TUNES = ("copy", "ft-identical", "ft-answer-only", "ft-all-tokens", "ft-no-eos", "ft-key-tokens")
REAL = ("copy", "ft-answer-only", "ft-all-tokens")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backends", default="hf,vllm")
    ap.add_argument("--limit", type=int, default=100)
    ap.add_argument("--thresholds", default="0,0.01,0.5")
    ap.add_argument("--candidates", default=None, help=f"default: {','.join(FINE_TUNES)}; --real: {','.join(REAL)}")
    ap.add_argument("--real", action="store_true", help="SmolLM2 and its real fine-tunes")
    ap.add_argument("--tasks", default="gsm8k,truthfulqa_gen,real_veltan", help="with --real: tasks of suite real")
    ap.add_argument("--termination", action="store_true", help="with --real: keep suite real's termination probe")
    ap.add_argument("--no-append", action="store_true")
    a = ap.parse_args()
    for k, v in ENV.items():
        os.environ.setdefault(k, v)
    import harness.drafts as drafts
    from harness import checkpoint
    from harness.config import RunConfig
    from harness.demo.build import build_demo
    from harness.runner import evaluate
    from harness.suites import load_suite
    from tests.test_backend_vllm import items_suite

    if a.real:
        from drafts import write_real_suite

        from harness.demo.real import build_real

        demo = build_real(REPO / ".cache" / "demo" / "real", ("ft-answer-only", "ft-all-tokens"))
    else:
        demo = build_demo(REPO / ".cache" / "demo")
    candidates = (a.candidates or ",".join(REAL if a.real else FINE_TUNES)).split(",")
    rows: list[list[str]] = []
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="regress-bench-threshold-") as d:
        tmp = Path(d)
        suite = write_real_suite(tmp, a.tasks.split(","), a.termination) if a.real else items_suite(tmp)
        copy = tmp / "copy"
        shutil.copytree(demo["base"], copy)
        (copy / "config.json").write_text((copy / "config.json").read_text() + "\n")
        paths = {**demo, "copy": copy}

        def run(path: Path, store: str, backend: str, base: object = None, **kw: object) -> object:
            cfg = RunConfig(suite=suite, backend=backend, store_dir=str(tmp / store), limit=a.limit, **kw)  # type: ignore[arg-type]
            ref = (base.records, base.store_path) if base is not None else (None, None)  # type: ignore[attr-defined]
            return evaluate(checkpoint.load(path), load_suite(suite), cfg, ref[0], ref[1])

        for backend in a.backends.split(","):
            base = run(demo["base"], f"base-{backend}", backend)
            for name in candidates:
                for th in (float(x) for x in a.thresholds.split(",")):
                    drafts.THRESHOLD = drafts.THRESHOLD_FP32 = th
                    res = run(paths[name], f"{backend}-{name}-{th}", backend, base, verify_drafts=True)
                    c = res.drafting  # type: ignore[attr-defined]
                    rows.append([backend, name, f"{th:g}", str(c.drafted), str(c.resumed), str(c.generated),
                                 f"{c.disagreed} of {c.verified}"])  # fmt: skip
                    print(rows[-1], flush=True)
    header = ["backend", "candidate", "threshold", "drafted", "resumed", "generated", "differ from full generation"]
    probe = "with" if a.termination else "without"
    where = f"SmolLM2, tasks {a.tasks} of suite real" if a.real else "demo suite"
    flag = " --real" if a.real else ""
    intro = (f"bench/draft_threshold.py{flag} --limit {a.limit} ({where} {probe} its termination probe; "
             f"--verify-drafts at each threshold), {time.perf_counter() - t_all:.0f} s in all.")  # fmt: skip
    record(f"drafting margin threshold, {machine()}", intro, header, rows, not a.no_append)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
