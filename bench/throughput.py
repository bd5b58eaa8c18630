"""Throughput benchmark (not a test): regress against the engines and tools it wraps.

    python bench/throughput.py [--sections engine,compare,tokens,report] [--pairs 100000]

Every ratio is measured in the same run, on the same machine, on the demo checkpoints
(built or reused under ``.cache/demo``). Prints a table and appends it, with the machine it
ran on, to ``bench/RESULTS.md``:

* ``engine``: ``regress run --backend vllm`` (lm-eval, store, records; probes off) vs a
  bare script that starts ``vllm.LLM`` and calls ``generate`` once on the same 2,000
  prompts with the same settings. Each side runs in its own fresh process (module
  imports of vllm and transformers done before the clock, everything after timed,
  engine start included), twice, alternating; the best of each is compared. Measured
  both cold (the process's first engine) and warm (an engine started and stopped once
  before the clock, as in a long-lived process). Target <= 1.15.
* ``compare``: ``regress compare`` with the base already recorded (candidate run, drift
  and termination probes, comparison, report) vs ``lm_eval run`` on the candidate alone,
  same backend (hf) and tasks, both as fresh processes. Target <= 1.0.
* ``tokens``: generated tokens/s of the ``hf`` and ``vllm`` backends on the same requests
  (engine already started), per demo checkpoint.
* ``report``: compare + gate + report alone on ``--pairs`` synthetic item pairs.
  Target <= 15 s.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
       "VLLM_CPU_KVCACHE_SPACE": "1", "GIT_DIR": os.devnull, "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}  # fmt: skip
for k, v in ENV.items():
    os.environ.setdefault(k, v)

GEN_TASKS = ["demo_add", "demo_rev", "demo_sort", "demo_count"]  # 4 x 500 = 2,000 generate items
ALL_TASKS = [*GEN_TASKS, "demo_cmp"]


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    load = "/".join(f"{x:.1f}" for x in os.getloadavg())
    omp = "".join(f"; {k}={os.environ[k]}" for k in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS") if k in os.environ)
    return f"{cpu}, {os.cpu_count()} cores, {gpu}; torch {torch.__version__}{omp}; load avg {load} at start"


def record(title: str, intro: str, header: list[str], rows: list[list[str]], append: bool) -> None:
    """Print one dated RESULTS.md section (a markdown table under ``## <date>: title``) and,
    unless ``append`` is False, add it to bench/RESULTS.md."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]
    stamp = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    block = f"\n## {stamp}: {title}\n\n{intro}\n\n" + "\n".join(lines) + "\n"
    print(block)
    if append:
        with (REPO / "bench" / "RESULTS.md").open("a") as f:
            f.write(block)


def timed(fn: Any) -> tuple[float, Any]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def write_suite(folder: Path, tasks: list[str], probes: bool) -> str:
    """A copy of the demo suite over ``tasks``, with or without its probes."""
    import yaml

    raw = yaml.safe_load((REPO / "suites" / "demo.yaml").read_text())
    raw.update(name="bench", tasks=tasks, task_dirs=[str(REPO / "suites" / d) for d in raw["task_dirs"]])
    if not probes:
        raw["probes"] = {"drift": False}
    path = folder / f"bench-{len(tasks)}-{int(probes)}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def gen_requests(records: Any) -> list[Any]:
    from harness.types import GenRequest

    return [GenRequest(r.prompt, ("<|end|>",), 48) for r in records if r.kind == "generate_until"]


# -- sections ---------------------------------------------------------------------------


CHILD_MARK = "regress-bench-child: "  # the line of an engine child's result


def engine_child(side: str, base: str, tmp: Path, warm: bool) -> None:
    """One timed side of the engine section, in a fresh process (``--engine-child``).

    Both sides import vllm and transformers before the clock starts and include
    everything after: regress its lazy imports (lm-eval), suite loading, the engine's
    start, the store and the records; the bare script its tokenizer, the engine's start
    and one ``generate``. A fresh process each, so neither pays for the other's heap.
    ``warm``: an engine is started and stopped once before the clock (vLLM's lazy
    imports and first-start costs paid), as in a long-lived process. Prints the seconds
    taken as JSON on a line of stdout that starts with ``CHILD_MARK`` (vLLM may log there too).
    """
    import json

    import transformers  # noqa: F401
    import vllm

    from harness.backends.vllm import engine_args, free_memory, shutdown
    from harness.config import BackendOptions

    prompts_file = tmp / "engine-prompts.json"
    if warm:
        llm = vllm.LLM(**engine_args(base, BackendOptions()))
        shutdown(llm)
        del llm
        free_memory()
    t0 = time.perf_counter()
    if side == "regress":
        from harness.config import RunConfig
        from harness.pipeline import run_one

        suite = write_suite(tmp, GEN_TASKS, probes=False)
        store = tempfile.mkdtemp(prefix="store-engine-", dir=tmp)
        res = run_one(base, RunConfig(suite=suite, backend="vllm", store_dir=store))  # checks and reads base once
        took = time.perf_counter() - t0
        prompts_file.write_text(json.dumps([r.prompt for r in gen_requests(res.records)]))
    else:
        from transformers import AutoTokenizer
        from vllm.inputs import TokensPrompt

        prompts = json.loads(prompts_file.read_text())
        tok = AutoTokenizer.from_pretrained(base)
        llm = vllm.LLM(**engine_args(base, BackendOptions()))
        sp = vllm.SamplingParams(temperature=0.0, max_tokens=48, stop=["<|end|>"], stop_token_ids=[tok.eos_token_id])
        ids = tok(prompts, add_special_tokens=False).input_ids
        llm.generate([TokensPrompt(prompt_token_ids=i) for i in ids], sp, use_tqdm=False)
        shutdown(llm)
        del llm
        free_memory()
        took = time.perf_counter() - t0
    print(CHILD_MARK + json.dumps({"side": side, "seconds": took, "n": len(json.loads(prompts_file.read_text()))}))


def section_engine(demo: dict[str, Path], tmp: Path, rows: list[list[str]], repeats: int = 2) -> list[Any]:
    import json

    from harness import checkpoint
    from harness.backends.vllm import VLLMBackend
    from harness.config import BackendOptions
    from harness.types import GenRequest

    VLLMBackend(checkpoint.load(demo["base"]), BackendOptions()).close()  # warm-up: the OS's file cache, both sides
    n = 0
    for warm in (False, True):
        times: dict[str, list[float]] = {"regress": [], "bare": []}
        for _ in range(repeats):  # alternating, so drift in the machine's load hits both sides
            for side in ("regress", "bare"):
                cmd = [sys.executable, __file__, "--engine-child", side, "--demo", str(demo["base"].parent),
                       "--tmp", str(tmp), *(["--warm"] if warm else [])]  # fmt: skip
                p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
                if p.returncode != 0:
                    raise SystemExit(f"engine child {side} failed: {p.stderr[-2000:]}")
                mine = [ln for ln in p.stdout.splitlines() if ln.startswith(CHILD_MARK)]
                if len(mine) != 1:
                    raise SystemExit(f"engine child {side} printed no result line: {p.stdout[-2000:]}")
                out = json.loads(mine[0][len(CHILD_MARK) :])
                times[side].append(out["seconds"])
                n = out["n"]
        t_regress, t_bare = min(times["regress"]), min(times["bare"])
        how = "engine started once before" if warm else "fresh process"
        sides = (("regress", t_regress, "regress run --backend vllm"), ("bare", t_bare, "bare vllm.LLM + generate"))
        for side, t, what in sides:
            every = ", ".join(f"{x:.1f}" for x in times[side])
            rows.append([f"{what}, {n} items, {how} (best of {repeats}: {every} s)", f"{t:.1f} s", "", ""])
        rows.append([f"ratio regress/bare, {how} (target <= 1.15)", "", f"{t_regress / t_bare:.2f}", ""])
    return [GenRequest(pr, ("<|end|>",), 48) for pr in json.loads((tmp / "engine-prompts.json").read_text())]


def section_tokens(demo: dict[str, Path], reqs: list[Any], rows: list[list[str]]) -> None:
    from harness import checkpoint
    from harness.backends import load_backend
    from harness.config import BackendOptions

    for name in ("base", "ft-all-tokens"):
        speeds = {}
        loaded = checkpoint.load(demo[name])
        for be in ("hf", "vllm"):
            b = load_backend(be, loaded, BackendOptions())
            t, gens = timed(lambda b=b: b.generate(reqs))
            b.close()
            n = sum(g.n_tokens for g in gens)
            speeds[be] = n / t
            rows.append([f"{be} generate, {name}, {len(reqs)} items, {n} tokens", f"{t:.1f} s", "", f"{n / t:,.0f}"])
        rows.append([f"vllm/hf tokens/s, {name}", "", f"{speeds['vllm'] / speeds['hf']:.2f}", ""])


def section_compare(demo: dict[str, Path], tmp: Path, rows: list[list[str]]) -> None:
    import yaml

    store, py = tmp / "store-compare", sys.executable
    regress = [py, "-m", "harness.cli"]
    run = [*regress, "run", "--model", str(demo["base"]), "--suite", "demo", "--store", str(store)]
    subprocess.run(run, check=True, cwd=REPO, capture_output=True)  # the base, recorded once (not timed)
    cand = demo["ft-answer-only"]
    cmp_cmd = [*regress, "compare", "--base", str(demo["base"]), "--model", str(cand), "--suite", "demo",
               "--store", str(store), "--out", str(tmp / "report")]  # fmt: skip
    t_regress, p = timed(lambda: subprocess.run(cmp_cmd, cwd=REPO, capture_output=True))
    if p.returncode not in (0, 1):
        raise SystemExit(f"regress compare failed: {p.stderr.decode()[-2000:]}")
    tasks_dir = tmp / "lm_eval_tasks"
    tasks_dir.mkdir(exist_ok=True)
    for t in ALL_TASKS:  # lm-eval's CLI needs absolute data paths
        cfg = yaml.safe_load((REPO / "suites" / "demo" / f"{t}.yaml").read_text())
        files = cfg["dataset_kwargs"]["data_files"]
        cfg["dataset_kwargs"]["data_files"] = {k: str(REPO / "suites" / "demo" / v) for k, v in files.items()}
        (tasks_dir / f"{t}.yaml").write_text(yaml.safe_dump(cfg))
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"  # as regress's hf backend picks
    dtype = "float32" if device == "cpu" else "auto"
    lm = [py, "-m", "lm_eval", "run", "--model", "hf", "--model_args", f"pretrained={cand},dtype={dtype}",
          "--tasks", ",".join(ALL_TASKS), "--include_path", str(tasks_dir), "--apply_chat_template",
          "--batch_size", "64", "--device", device, "--log_samples",
          "--output_path", str(tmp / "lm_eval_out")]  # fmt: skip
    t_lm, p = timed(lambda: subprocess.run(lm, cwd=tmp, capture_output=True))
    if p.returncode != 0:
        raise SystemExit(f"lm_eval failed: {p.stderr.decode()[-2000:]}")
    rows.append(["regress compare, base stored (2,500 items + probes + report)", f"{t_regress:.1f} s", "", ""])
    rows.append(["lm_eval run --model hf, candidate alone (2,500 items)", f"{t_lm:.1f} s", "", ""])
    rows.append(["ratio regress/lm_eval (target <= 1.0)", "", f"{t_regress / t_lm:.2f}", ""])


def synthetic(n: int, seed: int, flip: float) -> list[Any]:
    from harness.types import Record

    rng = random.Random(seed)
    out = []
    for i in range(n):
        task = f"task{i % 10}"
        right = rng.random() < (0.7 - flip)
        ans = str(i % 97) if right else str(i % 89 + 1)
        loop = rng.random() < flip
        text = ans + (" again" * 40 if loop else "")
        ids = tuple(rng.randrange(90) for _ in range(4)) + ((11, 12) * 20 if loop else ())
        out.append(
            Record(
                task=task,
                item_id=str(i),
                item_hash=f"h{i}",
                prompt_hash=f"p{i}",
                prompt=f"q {i}",
                target=str(i % 97),
                output=text,
                answer=ans,
                score=float(right),
                metric="exact_match",
                kind="generate_until",
                finish="length" if loop else "eos",
                n_tokens=len(ids),
                token_ids=ids,
            )  # fmt: skip
        )
    return out


def section_report(tmp: Path, pairs: int, rows: list[list[str]]) -> None:
    from harness.pipeline import build_policy, comparison_of
    from harness.report import write_report
    from harness.suites import load_suite
    from harness.types import Checkpoint, RunResult

    suite = load_suite("demo")
    base = RunResult(Checkpoint("base", "b" * 16), tuple(synthetic(pairs, 0, 0.0)), "", True, 0)
    cand = RunResult(Checkpoint("cand", "c" * 16), tuple(synthetic(pairs, 1, 0.05)), "", True, 0)

    def go() -> None:
        cmp = comparison_of(base, cand, suite, "hf", build_policy(suite, None))
        write_report(cmp, tmp / "report-synthetic")

    t, _ = timed(go)
    rows.append([f"compare + gate + report, {pairs:,} synthetic pairs (target <= 15 s)", f"{t:.1f} s", "", ""])


# -- main -------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sections", default="engine,tokens,compare,report")
    ap.add_argument("--pairs", type=int, default=100_000)
    ap.add_argument("--demo", default=str(REPO / ".cache" / "demo"))
    ap.add_argument("--no-append", action="store_true", help="print only; do not append to bench/RESULTS.md")
    ap.add_argument("--engine-child", choices=["regress", "bare"], help=argparse.SUPPRESS)
    ap.add_argument("--tmp", help=argparse.SUPPRESS)
    ap.add_argument("--warm", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.engine_child:
        engine_child(a.engine_child, str(Path(a.demo) / "base"), Path(a.tmp), a.warm)
        return 0
    sections = set(a.sections.split(","))
    from harness.demo.build import build_demo

    where = machine()
    demo = build_demo(Path(a.demo))
    rows: list[list[str]] = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="regress-bench-") as d:
        tmp = Path(d)
        reqs: list[Any] = []
        if "engine" in sections or "tokens" in sections:
            reqs = section_engine(demo, tmp, rows)
        if "tokens" in sections:
            section_tokens(demo, reqs, rows)
        if "compare" in sections:
            section_compare(demo, tmp, rows)
        if "report" in sections:
            section_report(tmp, a.pairs, rows)
    intro = f"bench/throughput.py, {time.perf_counter() - t0:.0f} s in all."
    record(where, intro, ["measure", "time", "ratio", "tokens/s"], rows, not a.no_append)
    return 0


if __name__ == "__main__":  # vLLM may spawn workers: keep the guard
    sys.exit(main())
