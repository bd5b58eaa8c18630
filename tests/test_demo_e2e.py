"""End to end on the real demo checkpoints (issue 2's must-holds), through the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from harness.cli import main
from tests.conftest import REPO

pytestmark = pytest.mark.slow


def _compare(demo, store, out: Path, ft: str, *extra: str) -> int:
    return main(
        ["compare", "--base", str(demo["base"]), "--model", str(demo[ft]), "--suite", "demo",
         "--store", str(store), "--out", str(out), *extra]
    )  # fmt: skip


def test_identical_checkpoint_passes_with_zero_flips(demo, session_store, tmp_path):
    out = tmp_path / "rep"
    assert _compare(demo, session_store, out, "ft-identical") == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["verdict"] == "PASS"
    assert s["base"]["fingerprint"] == s["candidate"]["fingerprint"]
    for t in s["tasks"]:
        assert t["negative_flips"] == 0 and t["positive_flips"] == 0, t["name"]
        assert t["identical_outputs"] == t["n"], t["name"]
        assert t["n"] == 500
    items = pd.read_parquet(out / "items.parquet")
    assert len(items) == 2500 and items["identical"].all()
    for f in ("report.html", "report.md", "junit.xml"):
        assert (out / f).stat().st_size > 0


def test_all_token_finetune_fails_naming_the_tasks(demo, session_store, tmp_path, capsys):
    out = tmp_path / "rep"
    assert _compare(demo, session_store, out, "ft-all-tokens") == 1
    s = json.loads((out / "summary.json").read_text())
    assert s["verdict"] == "FAIL"
    # every task that clearly lost accuracy is named, and every task named for an
    # accuracy drop did lose accuracy
    lost = [t["name"] for t in s["tasks"] if t["acc_candidate"] < t["acc_base"] - 0.05]
    assert lost, "the all-token fine-tune should lose accuracy somewhere"
    named = {r["task"] for r in s["rules"] if r["fired"] and r["rule"] == "acc_drop"}
    assert set(lost) <= named
    by_name = {t["name"]: t for t in s["tasks"]}
    assert all(by_name[n]["acc_candidate"] < by_name[n]["acc_base"] for n in named)
    reasons = " ".join(s["reasons"])
    for name in lost:
        assert name in reasons
    printed = capsys.readouterr().out
    assert "FAIL" in printed and str(out / "report.html") in printed


@pytest.mark.skipif(not (REPO / ".venv" / ".installed").exists(), reason="`make venv` has not run here")
def test_make_regress_passes_and_fails_with_the_verdict(demo, session_store, tmp_path):
    """`make regress MODEL= BASE=`: 0 on PASS; on FAIL or an error make's own 2, with one line
    that says which regress exit status it was. Records come from the store the tests above filled."""

    def make(model: str, name: str) -> subprocess.CompletedProcess[str]:
        cmd = ["make", "-s", "regress", f"BASE={demo['base']}", f"MODEL={model}",
               f"ARGS=--store {session_store}", f"OUT={tmp_path / name}"]  # fmt: skip
        return subprocess.run(cmd, cwd=REPO, text=True, capture_output=True, timeout=600)

    ok = make(str(demo["ft-identical"]), "same")
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "PASS" in ok.stdout and (tmp_path / "same" / "summary.json").exists()
    assert "make regress:" not in ok.stderr
    bad = make(str(demo["ft-all-tokens"]), "forgot")
    assert bad.returncode == 2, bad.stderr[-2000:]
    assert "FAIL" in bad.stdout and json.loads((tmp_path / "forgot" / "summary.json").read_text())["verdict"] == "FAIL"
    assert "make regress: regress exited 1 (regression found; 2 is an error)" in bad.stderr
    missing = make(str(tmp_path / "no-such-checkpoint"), "missing")
    assert missing.returncode == 2 and not (tmp_path / "missing").exists()
    lines = missing.stderr.splitlines()
    said = next(i for i, line in enumerate(lines) if line.startswith("make regress: regress exited 2"))
    assert "checkpoint not found" in lines[said - 1], missing.stderr[-2000:]


def test_base_skills_are_real(demo, session_store, tmp_path):
    """The base really has its four skills: >= 80% held-out accuracy on each."""
    out = tmp_path / "rep"
    _compare(demo, session_store, out, "ft-identical")
    s = json.loads((out / "summary.json").read_text())
    accs = {t["name"]: t["acc_base"] for t in s["tasks"]}
    for task in ("demo_add", "demo_rev", "demo_sort", "demo_cmp"):
        assert accs[task] >= 0.8, (task, accs[task])


def _lm_eval_task_dir(tmp: Path, tasks: list[str]) -> Path:
    """Copies of the demo task YAMLs with absolute data paths, as lm-eval's CLI needs."""
    import yaml

    d = tmp / "tasks"
    d.mkdir()
    for t in tasks:
        cfg = yaml.safe_load((REPO / "suites" / "demo" / f"{t}.yaml").read_text())
        files = cfg["dataset_kwargs"]["data_files"]
        cfg["dataset_kwargs"]["data_files"] = {k: str(REPO / "suites" / "demo" / v) for k, v in files.items()}
        (d / f"{t}.yaml").write_text(yaml.safe_dump(cfg))
    return d


def test_per_item_scores_equal_lm_eval_hf(demo, session_store, tmp_path):
    """regress's per-item scores equal those of `lm_eval run --model hf` (greedy, chat template)."""
    tasks = ["demo_add", "demo_cmp"]
    task_dir = _lm_eval_task_dir(tmp_path, tasks)
    out = tmp_path / "lm_eval_out"
    cmd = [
        sys.executable, "-m", "lm_eval", "run", "--model", "hf",
        "--model_args", f"pretrained={demo['base']},dtype=float32",
        "--tasks", ",".join(tasks), "--include_path", str(task_dir),
        "--apply_chat_template", "--log_samples", "--output_path", str(out), "--batch_size", "64",
        "--limit", "200",
    ]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True, cwd=tmp_path, timeout=900)
    theirs: dict[tuple[str, int], float] = {}
    for task in tasks:
        (f,) = out.rglob(f"samples_{task}_*.jsonl")
        for line in f.read_text().splitlines():
            row = json.loads(line)
            metric = "exact_match" if "exact_match" in row else "acc"
            theirs[(task, row["doc_id"])] = float(row[metric])

    from harness.config import RunConfig
    from harness.pipeline import run_one

    run = run_one(str(demo["base"]), RunConfig(suite="demo", store_dir=str(session_store)))
    ours = {(r.task, int(r.item_id.split("-")[1])): r.score for r in run.records if r.task in tasks}
    assert len(theirs) == 400
    mismatched = [k for k, v in theirs.items() if ours[k] != v]
    assert not mismatched, f"{len(mismatched)} items score differently, e.g. {mismatched[:5]}"
