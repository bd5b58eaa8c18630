"""Runs lm-eval already made as a side of a comparison (issue 23): ``regress compare
--base-samples DIR --model-samples DIR`` and its mixes with a live checkpoint.

The real lm-eval CLI (``python -m lm_eval run --model hf --log_samples``) runs on the demo
base and fine-tunes over the demo suite's own task YAMLs (copied beside their JSONL, which
lm-eval reads relative to its working folder), with the chat template as regress applies it.
Imported, the two logs must give what ``regress compare`` gives evaluating both checkpoints
itself on the same tasks and limit: the verdict, the flips of every task item by item, the
accuracies, and non-termination and loops item by item wherever a response's encoding has the
model's token count (a log holds text only: ``_finishes_agree``).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from harness.cli import main
from harness.lm_eval_logs import read_log, top_groups
from tests.conftest import REPO, concurrently

pytestmark = pytest.mark.slow
TASKS = ("demo_add", "demo_cmp", "demo_count", "demo_rev", "demo_sort")  # as lm-eval orders them: the live
# candidate beside a log runs the log's tasks in its order, the same suite as `--tasks TASKS`
LIMIT = 40
CANDIDATE = "ft-all-tokens"  # forgets and loops: a FAIL with flips, non-termination and loops to agree on


def lm_eval_run(ckpt: Path, out: Path, tasks_dir: Path, tasks=TASKS, limit=LIMIT, chat=True) -> Path:
    """``lm_eval run --log_samples`` on the demo tasks; the output folder it wrote."""
    cmd = [
        sys.executable, "-m", "lm_eval", "run", "--model", "hf",
        "--model_args", f"pretrained={ckpt},dtype=float32", "--tasks", ",".join(tasks),
        "--include_path", str(tasks_dir), "--log_samples", "--output_path", str(out),
        "--batch_size", "64", "--limit", str(limit), *(["--apply_chat_template"] if chat else []),
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=tasks_dir, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def logs(demo, tmp_path_factory) -> dict[str, Path]:
    """lm-eval's output folders: the base and the candidate on the demo tasks; the base on one
    task without the chat template; the candidate on another task alone."""
    root = tmp_path_factory.mktemp("lm_eval_logs")
    tasks_dir = root / "tasks"
    tasks_dir.mkdir()
    for f in (REPO / "suites" / "demo").iterdir():
        if f.suffix in (".yaml", ".jsonl"):
            shutil.copy(f, tasks_dir / f.name)
    runs = concurrently(
        lambda: lm_eval_run(demo["base"], root / "base", tasks_dir),
        lambda: lm_eval_run(demo[CANDIDATE], root / "cand", tasks_dir),
        lambda: lm_eval_run(demo["base"], root / "plain", tasks_dir, ("demo_add",), 5, chat=False),
        lambda: lm_eval_run(demo["ft-answer-only"], root / "count", tasks_dir, ("demo_count",), 5),
        workers=4,
    )
    return dict(zip(("base", "cand", "plain", "count"), runs, strict=True))


def _cli(*argv: str) -> int:
    return main(list(argv))


def _summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


def _flips(out: Path) -> dict[str, set[tuple[str, str]]]:
    items = pd.read_parquet(out / "items.parquet")
    return {
        task: {(str(r.item_id), r.flip) for r in g.itertuples() if r.flip}
        for task, g in items.groupby("task")
    }  # fmt: skip


SCORES = ("n", "acc_base", "acc_candidate", "negative_flips", "positive_flips")
RATES = ("nonterm_rate_base", "nonterm_rate_candidate", "loop_rate_base", "loop_rate_candidate")


def _rows(summary: dict, keys: tuple[str, ...] = SCORES + RATES) -> dict[str, tuple]:
    return {t["name"]: tuple(t[k] for k in keys) for t in summary["tasks"]}


def _finishes_agree(live: Path, logged: Path, tokenizer: Path) -> None:
    """Finish reasons are not in a log: regress encodes each response again to count its
    tokens (``lm_eval_logs``). That is the model's own count where the model made the
    tokenizer's encoding of its text; where it did not (two tokens where the encoding has
    one, as a looping fine-tune can), the encoding is shorter, and a response that ran to
    the cap can read as stopped. So: non-termination and loops equal item by item wherever
    the encoding has the model's count, and never a non-termination the live run did not see."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer))
    a = pd.read_parquet(live / "items.parquet").set_index(["task", "item_id"])
    b = pd.read_parquet(logged / "items.parquet").set_index(["task", "item_id"]).loc[a.index]
    gen = a[a["kind"] == "generate_until"]
    for side in ("base", "cand"):
        counted = pd.Series(
            [len(tok(o, add_special_tokens=False).input_ids) + (f == "eos") == n
             for o, f, n in zip(gen[f"output_{side}"], gen[f"finish_{side}"], gen[f"ntok_{side}"])],
            index=gen.index,
        )  # fmt: skip
        own = counted[counted].index
        assert len(own) >= 0.5 * len(gen), (side, len(own), len(gen))  # most responses: the comparison means something
        for col in (f"nonterm_{side}", f"loop_{side}"):
            assert b.loc[own, col].equals(a.loc[own, col]), col
        assert not (b[f"nonterm_{side}"] & ~a[f"nonterm_{side}"]).any()


@pytest.fixture(scope="module")
def live(demo, session_store, tmp_path_factory) -> Path:
    """``regress compare`` evaluating both checkpoints itself on the same tasks and limit."""
    out = tmp_path_factory.mktemp("live") / "report"
    code = _cli("compare", "--base", str(demo["base"]), "--model", str(demo[CANDIDATE]), "--tasks", ",".join(TASKS),
                "--limit", str(LIMIT), "--store", str(session_store), "--out", str(out))  # fmt: skip
    assert code in (0, 1)
    return out


def test_a_log_reads_every_item_and_filter(logs):
    log = read_log(logs["base"])  # lm-eval writes into a folder named after the model, one level down
    assert set(log.tasks) == set(TASKS)
    assert all(len({s["doc_id"] for s in log.samples[t]}) == LIMIT for t in TASKS)
    assert Path(log.results_file).parent.parent == logs["base"].resolve()
    assert log.configs["demo_add"]["generation_kwargs"]["max_gen_toks"] == 48


def test_two_logs_judge_as_regress_judges_both_checkpoints(demo, logs, live, tmp_path):
    out = tmp_path / "report"
    code = _cli("compare", "--base-samples", str(logs["base"]), "--model-samples", str(logs["cand"]), "--out", str(out))
    ours, theirs = _summary(live), _summary(out)
    assert theirs["verdict"] == ours["verdict"] == "FAIL" and code == 1
    assert _rows(theirs, SCORES) == _rows(ours, SCORES)
    assert _flips(out) == _flips(live)
    _finishes_agree(live, out, demo["base"])
    assert any(t["nonterm_rate_candidate"] > 0 for t in theirs["tasks"])  # judged from the response lengths
    src = theirs["sources"]
    assert src["base"]["kind"] == src["candidate"]["kind"] == "lm-eval log"
    assert src["base"]["lm_eval_version"] and "pretrained=" in src["base"]["model_args"]
    assert src["base"]["generation"]["demo_add"]["max_gen_toks"] == 48
    assert any("need both checkpoints run here" in w for w in theirs["warnings"])


def test_a_base_log_against_a_live_candidate(logs, live, demo, session_store, tmp_path):
    out = tmp_path / "report"
    # the candidate runs the log's tasks with the log's limit
    code = _cli("compare", "--base-samples", str(logs["base"]), "--model", str(demo[CANDIDATE]),
                "--store", str(session_store), "--out", str(out))  # fmt: skip
    ours, theirs = _summary(live), _summary(out)
    assert theirs["verdict"] == ours["verdict"] and code == 1
    assert _rows(theirs) == _rows(ours)
    assert theirs["sources"]["candidate"]["kind"] == "checkpoint"


def test_gate_and_trend_on_imported_runs(logs, demo, session_store, tmp_path, capsys):
    out = tmp_path / "report"
    _cli("compare", "--base-samples", str(logs["base"]), "--model-samples", str(logs["cand"]), "--out", str(out))
    before = _summary(out)
    assert _cli("gate", str(out)) == 1
    after = _summary(out)
    assert after["verdict"] == before["verdict"] and after["sources"] == before["sources"]
    policy = tmp_path / "lenient.yaml"
    policy.write_text("max_acc_drop: 1.0\nmax_negative_flip_rate: 1.0\nmax_nonterm_rise: 1.0\nmax_loop_rise: 1.0\n"
                      "max_premature_rise: 1.0\nmax_detectable_drop: 1.0\nmax_subtask_drop: 1.0\n")  # fmt: skip
    assert _cli("gate", str(out), "--policy", str(policy)) == 0
    # trend: a log as the base, a log and a live checkpoint as the run's checkpoints
    trend_out = tmp_path / "trend"
    capsys.readouterr()
    code = _cli("trend", "--base", str(logs["base"]), str(logs["cand"]), str(demo["ft-identical"]),
                "--store", str(session_store), "--out", str(trend_out))  # fmt: skip
    points = json.loads((trend_out / "trend.json").read_text())["points"]
    assert [p["path"] for p in points] == [str(logs["cand"]), str(demo["ft-identical"])]
    assert points[0]["verdict"] == "FAIL" and points[1]["verdict"] != "FAIL"
    assert code == 0  # the newest (the identical copy) does not fail


def test_another_prompt_template_is_refused_unless_allowed(logs, tmp_path, capsys):
    out = tmp_path / "report"
    capsys.readouterr()
    argv = ("compare", "--base-samples", str(logs["plain"]), "--model-samples", str(logs["cand"]), "--out", str(out))
    assert _cli(*argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "demo_add/add-0000: the prompt differs" in err[0] and "--allow-prompt-change" in err[0]
    assert not out.exists()
    assert _cli(*argv, "--allow-prompt-change") in (0, 1)
    s = _summary(out)
    assert [t["name"] for t in s["tasks"]] == ["demo_add"] and s["tasks"][0]["n"] == 5
    warnings = " ".join(s["warnings"])
    assert "compared anyway (--allow-prompt-change)" in warnings
    assert "only in the candidate" in warnings and "demo_count" in warnings  # tasks and items on one side only


def _broken(logs: dict[str, Path], tmp: Path, how: str) -> tuple[Path, Path]:
    """A base and a candidate folder, one of them broken as ``how`` says."""
    if how == "different tasks and models":
        return logs["plain"], logs["count"]
    cand = tmp / "cand"
    shutil.copytree(logs["cand"], cand)
    files = sorted(cand.rglob("samples_demo_sort_*.jsonl"))
    if how == "truncated mid-line":
        text = files[0].read_text()
        files[0].write_text(text[: len(text) // 2])
    elif how == "truncated at a line":
        lines = files[0].read_text().splitlines(keepends=True)
        files[0].write_text("".join(lines[: len(lines) // 2]))
    elif how == "no samples":
        for f in cand.rglob("samples_*.jsonl"):
            f.unlink()
    elif how == "empty folder":
        shutil.rmtree(cand)
        cand.mkdir()
    return logs["base"], cand


@pytest.mark.parametrize(
    ("how", "says"),
    [
        ("different tasks and models", "base and candidate share no task"),
        ("truncated mid-line", "is not JSON (a truncated or corrupt samples file)"),
        ("truncated at a line", "(a truncated samples file)"),
        ("no samples", "run lm_eval with --log_samples"),
        ("empty folder", "holds no lm-eval results_*.json"),
    ],
)
def test_logs_that_cannot_be_compared_are_one_line(logs, tmp_path, capsys, how, says):
    base, cand = _broken(logs, tmp_path, how)
    out, store = tmp_path / "report", tmp_path / "store"
    capsys.readouterr()
    code = _cli("compare", "--base-samples", str(base), "--model-samples", str(cand), "--out", str(out),
                "--store", str(store))  # fmt: skip
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2 and captured.out == ""
    assert len(lines) == 1 and says in lines[0], captured.err
    assert not out.exists() and not store.exists()


def test_lm_eval_groups_regroup_under_their_outermost_group():
    subtasks = {"mmlu": ["mmlu_stem", "mmlu_other"], "mmlu_stem": ["mmlu_anatomy"], "mmlu_other": ["mmlu_law"],
                "mmlu_anatomy": [], "mmlu_law": [], "gsm8k": []}  # fmt: skip
    assert top_groups(subtasks) == {"mmlu_anatomy": "mmlu", "mmlu_law": "mmlu"}


# -- registered tasks (lm-eval's own configs, bound to the local data root) ------------------

DATA = REPO.parent / "shared" / "benchmarks"
REGISTERED = ("arc_challenge", "gsm8k", "mmlu_high_school_geography")  # MC, generation with two filters, MC
DATA_KEYS = ("dataset_path", "dataset_name", "dataset_kwargs", "training_split", "validation_split", "test_split",
             "fewshot_split")  # fmt: skip


@pytest.mark.skipif(not (DATA / "MANIFEST.json").is_file(), reason=f"no benchmark data root at {DATA}")
def test_registered_task_logs_judge_as_regress_judges(demo, session_store, tmp_path):
    """lm-eval's registered tasks (multiple choice; gsm8k's generation with its two filters) on
    the demo base and a fine-tune: the logs compare as regress's own run of both does."""
    from harness.config import RunConfig
    from harness.suites import suite_for

    suite = suite_for(RunConfig(suite="demo", tasks=",".join(REGISTERED), data=str(DATA)))
    tasks_dir = tmp_path / "tasks"
    tasks_dir.mkdir()
    for name in REGISTERED:  # its registered YAML, included, with regress's data binding on top
        t = suite.task(name)
        registered = t.source.split("(", 1)[1].rstrip(")")  # "lm-eval registry (<yaml path>)"
        doc = {"include": registered, "task": name, **{k: t.config.get(k) for k in DATA_KEYS}}
        (tasks_dir / f"{name}.yaml").write_text(yaml.safe_dump(doc))
    limit, cand = 10, "ft-answer-only"
    base_log, cand_log = concurrently(
        lambda: lm_eval_run(demo["base"], tmp_path / "base", tasks_dir, REGISTERED, limit),
        lambda: lm_eval_run(demo[cand], tmp_path / "cand", tasks_dir, REGISTERED, limit),
    )
    live, logs_out = tmp_path / "live", tmp_path / "logs"
    code_live = _cli("compare", "--base", str(demo["base"]), "--model", str(demo[cand]), "--tasks",
                     ",".join(REGISTERED), "--data", str(DATA), "--limit", str(limit), "--store", str(session_store),
                     "--out", str(live))  # fmt: skip
    code = _cli("compare", "--base-samples", str(base_log), "--model-samples", str(cand_log), "--out", str(logs_out))
    ours, theirs = _summary(live), _summary(logs_out)
    assert (theirs["verdict"], code) == (ours["verdict"], code_live)
    assert _rows(theirs, SCORES) == _rows(ours, SCORES)
    assert _flips(logs_out) == _flips(live)
    _finishes_agree(live, logs_out, demo["base"])
    items = pd.read_parquet(logs_out / "items.parquet")
    assert set(items.loc[items.task == "arc_challenge", "kind"]) == {"multiple_choice"}
    gsm = json.loads(items.loc[items.task == "gsm8k", "metrics_base"].iloc[0])
    assert set(gsm) == {"exact_match,strict-match", "exact_match,flexible-extract"}
