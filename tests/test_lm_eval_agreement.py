"""Per-item agreement with lm-eval itself on registered tasks over the local data root (issue 13).

`lm_eval run --model hf --apply_chat_template --log_samples` on the same checkpoint, tasks,
data and limit must give the same per-item scores as regress's records, for every metric of
every filter (gsm8k: strict-match and flexible-extract; ifeval: its four accuracies; an MMLU
subject: acc), asserted item by item; and lm-eval's prompts must be regress's prompts.

lm-eval reads the same local files: each task is given to its CLI as a YAML that includes the
task's own registered YAML and overrides only where the data comes from (the binding regress
made), through ``--include_path``. The demo checkpoint knows 512 positions, so both cut a
longer prompt from the left the same way (gsm8k's 5-shot prompt, ~3,200 tokens, to its last
512 - 256; an MMLU pair to its last 513 tokens): lm-eval runs with its own default length.
IFEval asks for 1,280 tokens, which lm-eval refuses on a 512-position model (regress cuts
what does not fit and ends the answer at the context), so lm-eval runs it with 8192
positions and it is compared on the items that fit in 512 on regress's side.
"""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
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


# lm-eval's CLI with its scorers seeded as regress seeds them (runner.seed_scorers): unseeded,
# IFEval's language checks score a short answer at random, in lm-eval's run as in any other
SEEDED_LM_EVAL = (
    "from harness.runner import seed_scorers; seed_scorers(); "
    "from lm_eval.__main__ import cli_evaluate; cli_evaluate()"
)


def _lm_eval(ckpt: Path, tasks: list[str], tasks_dir: Path, out: Path, extra_args: str) -> dict[str, list[dict]]:
    """``lm_eval run --model hf`` on ``tasks``; each task's logged samples."""
    cmd = [
        sys.executable, "-c", SEEDED_LM_EVAL, "run", "--model", "hf",
        "--model_args", f"pretrained={ckpt},dtype=float32{extra_args}",
        "--tasks", ",".join(tasks), "--include_path", str(tasks_dir),
        "--apply_chat_template", "--log_samples", "--output_path", str(out), "--batch_size", "64",
        "--limit", str(LIMIT),
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=out.parent, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    found = {}
    for task in tasks:
        (f,) = out.rglob(f"samples_{task}_*.jsonl")
        found[task] = [json.loads(line) for line in f.read_text().splitlines()]
    return found


def base_ckpt_tokenizer(ckpt: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(ckpt))


def _number(v) -> float:
    return sum(map(float, v)) / len(v) if isinstance(v, list) else float(v)


def test_per_item_scores_equal_lm_eval_on_registered_tasks(base_ckpt, session_store, tmp_path):
    from harness.config import RunConfig
    from harness.pipeline import run_one
    from harness.suites import suite_for

    cfg = RunConfig(suite="demo", tasks=RUN_TASKS, data=str(DATA), limit=LIMIT, store_dir=str(session_store))
    tasks_dir = _lm_eval_tasks(tmp_path, suite_for(cfg))
    # lm-eval's own length (the model's 512) where it runs; IFEval's budget (1,280 tokens) is
    # more than lm-eval allows a 512-position model, so it gets 8192 and is compared on the
    # items whose prompt and answer fit in 512 on regress's side (nothing cut on either side).
    # lm-eval's two runs go on beside regress's own.
    with ThreadPoolExecutor(max_workers=2) as pool:
        cut = pool.submit(_lm_eval, base_ckpt, [t for t in COMPARED if t != "ifeval"], tasks_dir, tmp_path / "cut", "")
        long = pool.submit(_lm_eval, base_ckpt, ["ifeval"], tasks_dir, tmp_path / "long", ",max_length=8192")
        run = run_one(str(base_ckpt), cfg)
        samples = {**cut.result(), **long.result()}
    ours = {(r.task, r.item_id): r for r in run.records}
    tok = base_ckpt_tokenizer(base_ckpt)

    compared, mismatched, prompts_differ, past_context = 0, [], [], 0
    for task in COMPARED:
        assert len({s["doc_id"] for s in samples[task]}) == LIMIT
        for s in samples[task]:
            r = ours[(task, str(s["doc_id"]))]
            # a margin of two for BOS
            if task == "ifeval" and len(tok(r.prompt, add_special_tokens=False).input_ids) + r.n_tokens >= 510:
                past_context += 1
                continue
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
        f"lm-eval agreement: {compared - len(mismatched)}/{compared} item scores equal "
        f"({past_context} IFEval items past the context not compared)",
        file=sys.stderr,
    )
    assert not prompts_differ, f"{len(prompts_differ)} prompts differ from lm-eval's, e.g. {prompts_differ[:3]}"
    # 20 items x (gsm8k: 2 filters; mmlu: acc), and IFEval's 4 metrics on the items that fit
    assert past_context < LIMIT and compared == LIMIT * (2 + 1) + (LIMIT - past_context) * 4
    assert not mismatched, f"{len(mismatched)} item scores differ from lm-eval's, e.g. {mismatched[:5]}"
