"""Per-item agreement with lm-eval itself on registered tasks over the local data root (issue 13).

`lm_eval run --model hf --apply_chat_template --log_samples` on the same checkpoint, tasks,
data and limit must give the same per-item scores as regress's records, for every metric of
every filter (gsm8k: strict-match and flexible-extract; ifeval: its four accuracies; an MMLU
subject: acc), asserted item by item; and lm-eval's prompts must be regress's prompts.

lm-eval reads the same local files: each task is given to its CLI as a YAML that includes the
task's own registered YAML and overrides only where the data comes from (the binding regress
made), through ``--include_path``. The demo checkpoint knows 512 positions; lm-eval's HF model
would cut every prompt to its last 512 - 256 tokens (gsm8k's 5-shot prompt is ~3,200), while
regress hands the backend the whole prompt, so lm-eval is told ``max_length=8192``: the same
prompts reach the model on both sides, which is what is compared.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

DATA = REPO.parent / "shared" / "benchmarks"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (DATA / "MANIFEST.json").is_file(), reason=f"no benchmark data root at {DATA}"),
]
# the tasks and limit of test_registered_tasks' run: a session that runs both evaluates regress once
RUN_TASKS = (
    "gsm8k,mmlu_high_school_geography,mmlu_abstract_algebra,arc_challenge,hellaswag,"
    "bbh_zeroshot_sports_understanding,bbh_zeroshot_boolean_expressions,ifeval"
)
COMPARED = ("gsm8k", "ifeval", "mmlu_high_school_geography")
LIMIT = 20
DATA_KEYS = ("dataset_path", "dataset_name", "dataset_kwargs", "training_split", "validation_split", "test_split",
             "fewshot_split")  # fmt: skip


def _lm_eval_tasks(tmp: Path, suite) -> Path:
    """For each compared task: its registered YAML, included, with regress's data binding on top."""
    d = tmp / "tasks"
    d.mkdir()
    for name in COMPARED:
        t = suite.task(name)
        registered = t.source.split("(", 1)[1].rstrip(")")  # "lm-eval registry (<yaml path>)"
        doc = {"include": registered, "task": name, **{k: t.config.get(k) for k in DATA_KEYS}}
        (d / f"{name}.yaml").write_text(yaml.safe_dump(doc))
    return d


def _number(v) -> float:
    return sum(map(float, v)) / len(v) if isinstance(v, list) else float(v)


def test_per_item_scores_equal_lm_eval_on_registered_tasks(base_ckpt, session_store, tmp_path):
    from harness.config import RunConfig
    from harness.pipeline import run_one
    from harness.suites import suite_for

    cfg = RunConfig(suite="demo", tasks=RUN_TASKS, data=str(DATA), limit=LIMIT, store_dir=str(session_store))
    t0 = time.monotonic()
    run = run_one(str(base_ckpt), cfg)
    t_regress = time.monotonic() - t0
    ours = {(r.task, r.item_id): r for r in run.records}

    out = tmp_path / "lm_eval_out"
    cmd = [
        sys.executable, "-m", "lm_eval", "run", "--model", "hf",
        "--model_args", f"pretrained={base_ckpt},dtype=float32,max_length=8192",
        "--tasks", ",".join(COMPARED), "--include_path", str(_lm_eval_tasks(tmp_path, suite_for(cfg))),
        "--apply_chat_template", "--log_samples", "--output_path", str(out), "--batch_size", "64",
        "--limit", str(LIMIT),
    ]  # fmt: skip
    t0 = time.monotonic()
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=1200)
    t_lm_eval = time.monotonic() - t0
    assert done.returncode == 0, done.stderr[-3000:]

    compared, mismatched, prompts_differ = 0, [], []
    for task in COMPARED:
        (f,) = out.rglob(f"samples_{task}_*.jsonl")
        samples = [json.loads(line) for line in f.read_text().splitlines()]
        assert len({s["doc_id"] for s in samples}) == LIMIT
        for s in samples:
            r = ours[(task, str(s["doc_id"]))]
            args = s["arguments"]
            first = next(iter(args.values())) if isinstance(args, dict) else args[0]
            prompt = first["arg_0"] if isinstance(first, dict) else first[0]
            if prompt != r.prompt:
                prompts_differ.append((task, s["doc_id"]))
            for m in s["metrics"]:
                key = f"{m},{s['filter']}"
                compared += 1
                if r.metrics.get(key) != _number(s[m]):
                    mismatched.append((task, s["doc_id"], key, r.metrics.get(key), s[m]))
    print(
        f"lm-eval agreement: {compared - len(mismatched)}/{compared} item scores equal; "
        f"regress {t_regress:.0f} s, lm_eval {t_lm_eval:.0f} s",
        file=sys.stderr,
    )
    assert not prompts_differ, f"{len(prompts_differ)} prompts differ from lm-eval's, e.g. {prompts_differ[:3]}"
    # 20 items x (gsm8k: 2 filters; ifeval: 4 metrics; mmlu: acc)
    assert compared == LIMIT * (2 + 4 + 1)
    assert not mismatched, f"{len(mismatched)} item scores differ from lm-eval's, e.g. {mismatched[:5]}"
