"""SmolLM2-135M-Instruct benchmark (not a test): regress's engines on a real instruct model.

    python bench/real_engine.py [--limit 20] [--tasks real_veltan,gsm8k] [--no-append]

On the real demo's base (``regress demo --real`` builds it; converted here if missing), same
items, same machine, one run:

* ``engine``: ``regress run --backend vllm`` (lm-eval, store, records; probes off) vs a bare
  script's ``vllm.LLM.generate`` on the generation prompts regress handed the engine, each
  in its own fresh process, engine start included on both sides.
* ``tokens``: generated tokens/s of the ``hf`` and ``vllm`` backends on those requests.
* ``agreement``: ``regress run`` with ``--backend hf`` and ``--backend vllm`` on the same
  items: how many items differ in output, score or finish reason (fp32 on CPU: expected 0).

Appends the table, with the machine, to ``bench/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
from throughput import CHILD_MARK, ENV, machine  # noqa: E402

DATA = REPO.parent / "shared" / "benchmarks"


def write_suite(folder: Path, tasks: list[str]) -> str:
    import yaml

    raw = {"name": "bench-real", "version": 1, "task_dirs": [str(REPO / "suites" / "real")], "tasks": tasks,
           "chat_template": True, "data": str(DATA), "probes": {"drift": False}}  # fmt: skip
    path = folder / "bench-real.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def requests_of(res: Any, suite_path: str) -> list[dict[str, Any]]:
    """The generation requests regress made for a run's records (prompt, stops, token budget)."""
    from harness.lm_adapter import gen_request
    from harness.suites import load_suite

    suite = load_suite(suite_path)
    kwargs = {t.name: (t.config or {}).get("generation_kwargs") or {} for t in suite.tasks}
    out = []
    for r in res.records:
        if r.kind == "generate_until":
            g = gen_request(r.prompt, kwargs.get(r.task, {}), 256)
            out.append({"prompt": g.prompt, "stop": list(g.stop), "max_tokens": g.max_tokens})
    return out


def child(side: str, base: str, tmp: Path, tasks: list[str], limit: int) -> None:
    """One timed side in a fresh process; prints its seconds on a line starting with CHILD_MARK."""
    import transformers  # noqa: F401
    import vllm

    from harness.backends.vllm import engine_args, free_memory, shutdown
    from harness.config import BackendOptions

    prompts_file = tmp / "prompts.json"
    t0 = time.perf_counter()
    if side == "regress":
        from harness.config import RunConfig
        from harness.pipeline import run_one

        res = run_one(base, RunConfig(suite=write_suite(tmp, tasks), backend="vllm", store_dir=str(tmp / "s-v"),
                                      limit=limit))  # fmt: skip
        took = time.perf_counter() - t0
        prompts_file.write_text(json.dumps(requests_of(res, write_suite(tmp, tasks))))
    else:
        from transformers import AutoTokenizer
        from vllm.inputs import TokensPrompt

        prompts = json.loads(prompts_file.read_text())
        tok = AutoTokenizer.from_pretrained(base)
        llm = vllm.LLM(**engine_args(base, BackendOptions()))
        params = [vllm.SamplingParams(temperature=0.0, max_tokens=p["max_tokens"], stop=p["stop"] or None,
                                      stop_token_ids=[tok.eos_token_id]) for p in prompts]  # fmt: skip
        ids = tok([p["prompt"] for p in prompts], add_special_tokens=False).input_ids
        llm.generate([TokensPrompt(prompt_token_ids=i) for i in ids], params, use_tqdm=False)
        shutdown(llm)
        free_memory()
        took = time.perf_counter() - t0
    print(CHILD_MARK + json.dumps({"side": side, "seconds": took}))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=20)
    ap.add_argument("--tasks", default="real_veltan,gsm8k")  # generation tasks: the bare side only generates
    ap.add_argument("--no-append", action="store_true")
    ap.add_argument("--child", choices=["regress", "bare"], help=argparse.SUPPRESS)
    ap.add_argument("--base", help=argparse.SUPPRESS)
    ap.add_argument("--tmp", help=argparse.SUPPRESS)
    a = ap.parse_args()
    for k, v in ENV.items():
        import os

        os.environ.setdefault(k, v)
    tasks = a.tasks.split(",")
    if a.child:
        child(a.child, a.base, Path(a.tmp), tasks, a.limit)
        return 0
    from harness.demo.real import build_real

    base = build_real(REPO / ".cache" / "demo" / "real", fine_tunes=())["base"]
    rows: list[list[str]] = []
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="regress-bench-real-") as d:
        tmp = Path(d)
        times = {}
        for side in ("regress", "bare"):
            cmd = [sys.executable, __file__, "--child", side, "--base", str(base), "--tmp", str(tmp),
                   "--tasks", a.tasks, "--limit", str(a.limit)]  # fmt: skip
            p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
            mine = [ln for ln in p.stdout.splitlines() if ln.startswith(CHILD_MARK)]
            if p.returncode or len(mine) != 1:
                raise SystemExit(f"{side} side failed: {p.stderr[-2000:]}")
            times[side] = json.loads(mine[0][len(CHILD_MARK) :])["seconds"]
        what = f"{a.limit} items of each of {a.tasks}, fresh process, engine start included"
        rows.append([f"regress run --backend vllm, {what}", f"{times['regress']:.1f} s", "", ""])
        rows.append([f"bare vllm.LLM + generate on its generation prompts, {what}", f"{times['bare']:.1f} s", "", ""])
        rows.append(["ratio regress/bare (target <= 1.15)", "", f"{times['regress'] / times['bare']:.2f}", ""])
        rows += tokens_and_agreement(base, tmp, tasks, a.limit)
    header = ["measure", "time", "ratio", "tokens/s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]
    stamp = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    block = (f"\n## {stamp}: SmolLM2-135M-Instruct, {machine()}\n\nbench/real_engine.py, "
             f"{time.perf_counter() - t_all:.0f} s in all.\n\n" + "\n".join(lines) + "\n")  # fmt: skip
    print(block)
    if not a.no_append:
        with (REPO / "bench" / "RESULTS.md").open("a") as f:
            f.write(block)
    return 0


def tokens_and_agreement(base: Path, tmp: Path, tasks: list[str], limit: int) -> list[list[str]]:
    from harness import checkpoint
    from harness.backends import load_backend
    from harness.config import BackendOptions, RunConfig
    from harness.pipeline import run_one
    from harness.types import GenRequest

    rows: list[list[str]] = []
    suite = write_suite(tmp, tasks)
    runs = {be: run_one(str(base), RunConfig(suite=suite, backend=be, store_dir=str(tmp / f"s-{be}"), limit=limit))
            for be in ("vllm", "hf")}  # fmt: skip
    by = {be: {(r.task, r.item_id): r for r in run.records} for be, run in runs.items()}
    keys = sorted(by["hf"])
    differ = [k for k in keys if (by["hf"][k].output, by["hf"][k].score, by["hf"][k].finish)
              != (by["vllm"][k].output, by["vllm"][k].score, by["vllm"][k].finish)]  # fmt: skip
    rows.append([f"hf vs vllm, {len(keys)} items: outputs, scores or finish reasons that differ", "",
                 f"{len(differ)} of {len(keys)}", ""])  # fmt: skip
    reqs = [GenRequest(q["prompt"], tuple(q["stop"]), q["max_tokens"]) for q in requests_of(runs["vllm"], suite)]
    loaded = checkpoint.load(base)
    speeds: dict[str, float] = {}
    for be in ("hf", "vllm"):
        b = load_backend(be, loaded, BackendOptions())
        t0 = time.perf_counter()
        gens = b.generate(reqs)
        t = time.perf_counter() - t0
        b.close()
        n = sum(g.n_tokens for g in gens)
        speeds[be] = n / t
        rows.append(
            [f"{be} generate, {len(reqs)} requests, {n} tokens (engine started)", f"{t:.1f} s", "", f"{n / t:,.0f}"]
        )
    rows.append(["vllm/hf tokens/s", "", f"{speeds['vllm'] / speeds['hf']:.2f}", ""])
    return rows


if __name__ == "__main__":  # vLLM may spawn workers: keep the guard
    sys.exit(main())
