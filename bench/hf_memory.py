"""The hf backend's batches sized by memory (issue 22 item 4; not a test).

    python bench/hf_memory.py [--limit 40] [--repeats 3] [--tasks arc_challenge,bbh_zeroshot_boolean_expressions]

On the real demo's base (SmolLM2-135M-Instruct, ``.cache/demo/real/base``), the same real
tasks and items bound to the benchmark copy in ``../shared/benchmarks`` as suites/core.yaml
binds them (chat template on, probes off: lm-eval runs none), each side a whole process
under ``/usr/bin/time -v``, alternating, ``--repeats`` times:

* ``regress run`` with its defaults (hf backend, batches sized by memory), a fresh store;
* lm-eval's own ``HFLM`` (``lm_eval run --model hf --batch_size 16``, float32 as regress
  on CPU) through ``lm_eval.simple_evaluate`` on the same task configs and ``--limit``.

Reports the median wall time, peak RSS and system time of each, and the ratio (target:
regress <= 0.9x lm-eval's wall time at no more peak memory). Appends to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
from throughput import ENV, machine, record  # noqa: E402

DATA = REPO.parent / "shared" / "benchmarks"
BASE = REPO / ".cache" / "demo" / "real" / "base"


def write_suite(folder: Path, tasks: list[str]) -> Path:
    import yaml

    raw = {"name": "bench-memory", "version": 1, "tasks": tasks, "chat_template": True, "data": str(DATA),
           "probes": {"drift": False}}  # fmt: skip
    path = folder / "bench-memory.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def lm_eval_child(suite: str, base: str, limit: int, batch: int) -> None:
    """lm-eval's HF model on the suite's task configs (as ``lm_eval run --model hf`` would run them)."""
    import lm_eval
    import torch
    from lm_eval.tasks import TaskManager

    from harness.suites import load_suite

    device = "cuda" if torch.cuda.is_available() else "cpu"  # HFLM's default is cuda, which a CPU build refuses
    s = load_suite(suite)
    tasks = [t.config if t.config is not None else t.name for t in s.tasks]
    lm_eval.simple_evaluate(
        model="hf", model_args=f"pretrained={base},dtype=float32,device={device}", tasks=tasks, batch_size=batch,
        limit=limit, apply_chat_template=True, bootstrap_iters=0, task_manager=TaskManager(include_defaults=False),
    )  # fmt: skip


def timed(cmd: list[str]) -> dict[str, float]:
    """Wall seconds, peak RSS (GiB) and system seconds of one whole process."""
    env = {**os.environ, **ENV, "PYTHONPATH": str(REPO)}
    p = subprocess.run(["/usr/bin/time", "-v", *cmd], cwd=REPO, env=env, capture_output=True, text=True)
    if p.returncode:
        raise SystemExit(f"{cmd[:3]} failed: {p.stderr[-3000:]}")
    wall = re.search(r"Elapsed \(wall clock\) time .*: (?:(\d+):)?(\d+):([\d.]+)", p.stderr)
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr)
    system = re.search(r"System time \(seconds\): ([\d.]+)", p.stderr)
    assert wall and rss and system, p.stderr[-2000:]
    h, m, s = wall.groups()
    return {
        "wall": int(h or 0) * 3600 + int(m) * 60 + float(s),
        "rss": int(rss.group(1)) / 2**20,
        "sys": float(system.group(1)),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--tasks", default="arc_challenge,bbh_zeroshot_boolean_expressions")
    ap.add_argument("--lm-eval-batch", type=int, default=16)
    ap.add_argument("--no-append", action="store_true")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        lm_eval_child(a.child, str(BASE), a.limit, a.lm_eval_batch)
        return 0
    runs: dict[str, list[dict[str, float]]] = {"regress": [], "lm_eval": []}
    with tempfile.TemporaryDirectory(prefix="regress-bench-mem-") as d:
        suite = write_suite(Path(d), a.tasks.split(","))
        for i in range(a.repeats):
            store = Path(d) / f"store-{i}"
            regress = [str(REPO / ".venv" / "bin" / "regress"), "run", "--model", str(BASE), "--suite", str(suite),
                       "--limit", str(a.limit), "--store", str(store)]  # fmt: skip
            runs["regress"].append(timed(regress))
            child = [sys.executable, __file__, "--child", str(suite), "--limit", str(a.limit),
                     "--lm-eval-batch", str(a.lm_eval_batch)]  # fmt: skip
            runs["lm_eval"].append(timed(child))
            batching = next(store.glob("*/batching.json"), None)
            used = batching.read_text() if batching else "?"
            print(f"run {i + 1}: regress {runs['regress'][-1]}, lm_eval {runs['lm_eval'][-1]}, batches {used}")
    med = {k: {m: statistics.median(r[m] for r in v) for m in ("wall", "rss", "sys")} for k, v in runs.items()}
    what = f"{a.limit} items of each of {a.tasks}, whole process, median of {a.repeats}"
    rows = [
        [f"regress run (defaults: hf, batches by memory), {what}", f"{med['regress']['wall']:.1f} s",
         f"{med['regress']['rss']:.2f} GiB", f"{med['regress']['sys']:.1f} s", ""],
        [f"lm-eval HFLM --batch_size {a.lm_eval_batch}, float32, {what}", f"{med['lm_eval']['wall']:.1f} s",
         f"{med['lm_eval']['rss']:.2f} GiB", f"{med['lm_eval']['sys']:.1f} s", ""],
        ["ratio regress/lm-eval (target <= 0.9 at no more memory)", "", "", "",
         f"{med['regress']['wall'] / med['lm_eval']['wall']:.2f} (memory "
         f"{med['regress']['rss'] / med['lm_eval']['rss']:.2f})"],
    ]  # fmt: skip
    header = ["measure", "wall", "peak RSS", "system time", "ratio"]
    record(f"hf batches by memory, SmolLM2-135M-Instruct, {machine()}", "bench/hf_memory.py", header, rows,
           not a.no_append)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
