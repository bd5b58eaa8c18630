"""Gating a run while it trains (issue 24), on the real demo checkpoints and a real Trainer.

* ``regress watch`` on a folder that a background process fills with checkpoints (weights
  first, in two halves with a pause between, ``trainer_state.json`` last): each gated once,
  in order, never a half-written one; SIGINT exits 130 and the same command resumes.
* ``RegressCallback`` on a real ``transformers.Trainer`` run (the demo base, the careless
  all-token fine-tune on the count skill, a save every few steps): one verdict per save in
  the log history, and with ``stop_on_fail`` the run ends at the first FAILed checkpoint,
  the step ``regress trend`` names on the same folders.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from harness import checkpoint as ckpt
from harness.cli import main
from tests.conftest import REPO

pytestmark = pytest.mark.slow

# a cheap slice: two of the base's skills, a few items each (the careless fine-tune loses them)
SLICE = ("--tasks", "demo_add,demo_rev", "--limit", "12")
# checkpoint-N of the filled run, copied from the demo's checkpoints: two that pass, two that fail
PLAN = ((10, "ft-identical"), (20, "ft-answer-only"), (30, "ft-all-tokens"), (40, "ft-no-eos"))
ENV = {**os.environ, "PYTHONPATH": str(REPO)}

# The background writer: each checkpoint's weights in two halves with a pause between (a
# truncated safetensors file sits there meanwhile), then its other files, a pause, and the
# trainer's state file last; the sentinel after the last one.
FILLER = """
import shutil, sys, time
from pathlib import Path
run, plan = Path(sys.argv[1]), sys.argv[2:]
for spec in plan:
    step, src = spec.split("=")
    src, d = Path(src), run / f"checkpoint-{step}"
    d.mkdir(parents=True)
    data = (src / "model.safetensors").read_bytes()
    with open(d / "model.safetensors", "wb") as f:
        f.write(data[: len(data) // 2]); f.flush(); time.sleep(1.5)
        f.write(data[len(data) // 2 :])
    for g in src.iterdir():
        if g.name != "model.safetensors":
            shutil.copy(g, d / g.name)
    time.sleep(1.0)
    (d / "trainer_state.json").write_text('{"global_step": %s}' % step)
    time.sleep(1.0)
(run / "DONE").write_text("")
"""


def _watch_argv(demo, run: Path, out: Path, store: Path, *extra: str) -> list[str]:
    return ["watch", "--base", str(demo["base"]), str(run), "--out", str(out), "--store", str(store),
            "--poll", "0.3", *SLICE, *extra]  # fmt: skip


def _state_steps(out: Path) -> list[int]:
    return [p["step"] for p in json.loads((out / "watch.json").read_text())["points"]]


def _copy_run(demo, run: Path, plan=PLAN) -> None:
    for step, name in plan:
        shutil.copytree(demo[name], run / f"checkpoint-{step}")
        (run / f"checkpoint-{step}" / "trainer_state.json").write_text(json.dumps({"global_step": step}))


def test_watch_gates_each_landed_checkpoint_once_and_resumes_after_sigint(demo, session_store, tmp_path):
    run, out = tmp_path / "run", tmp_path / "watch"
    run.mkdir()
    plan = [f"{step}={demo[name]}" for step, name in PLAN]
    argv = [sys.executable, "-m", "harness.cli", *_watch_argv(demo, run, out, session_store)]
    # a background job of a non-interactive shell ignores SIGINT, and Python keeps an
    # inherited SIG_IGN: the watch gets the default disposition back, as at a terminal
    first = subprocess.Popen(argv, cwd=REPO, env=ENV, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    assert first.stdout is not None
    assert first.stdout.readline().startswith("watching")  # the base evaluated: now the run starts
    filler = subprocess.Popen([sys.executable, "-c", FILLER, str(run), *plan])
    try:
        lines = []
        for line in first.stdout:  # the first checkpoint gated: interrupt
            lines.append(line)
            if line.strip().startswith("step"):
                first.send_signal(signal.SIGINT)
                break
        out1, err1 = first.communicate(timeout=300)
        assert first.returncode == 130, err1
        gated_first = [ln for ln in lines + out1.splitlines() if ln.strip().startswith("step")]
        assert gated_first and "checkpoint-10" in gated_first[0]
        n_first = len(_state_steps(out))
        assert n_first == len(gated_first)

        second = subprocess.run(argv, cwd=REPO, env=ENV, text=True, capture_output=True, timeout=600)
    finally:
        if first.poll() is None:
            first.kill()
        filler.wait(timeout=120)
    assert second.returncode == 1, second.stderr  # the newest (ft-no-eos) fails
    assert f"resuming: {n_first} checkpoint(s) already gated" in second.stdout
    gated_second = [ln for ln in second.stdout.splitlines() if ln.strip().startswith("step")]
    # each checkpoint gated once over the two runs, in step order
    order = [int(ln.split()[1]) for ln in gated_first + gated_second]
    assert order == [10, 20, 30, 40]
    assert _state_steps(out) == [10, 20, 30, 40]
    verdicts = [p["verdict"] for p in json.loads((out / "trend.json").read_text())["points"]]
    assert verdicts[0] == "PASS" and verdicts[2] == "FAIL"
    # what was gated is the finished folder, never the half-written one
    for step, name in PLAN:
        s = json.loads((out / f"checkpoint-{step}" / "summary.json").read_text())
        assert (
            s["candidate"]["fingerprint"]
            == ckpt.fingerprint(demo[name])
            == ckpt.fingerprint(run / f"checkpoint-{step}")
        )
    assert (out / "trend.html").stat().st_size > 0


def test_watch_stops_at_until_step_and_at_the_first_fail(demo, session_store, tmp_path, capsys):
    run = tmp_path / "run"
    _copy_run(demo, run)
    (run / "checkpoint-50").mkdir()  # a save that never finished: no state file, never read
    (run / "checkpoint-50" / "model.safetensors").write_bytes(b"half")
    assert main(_watch_argv(demo, run, tmp_path / "a", session_store, "--until-step", "20")) == 0
    assert _state_steps(tmp_path / "a") == [10, 20]
    assert not (run / "STOP").exists()
    # the same folder and --out, on to the sentinel: the first two are not gated again
    (run / "DONE").write_text("")
    capsys.readouterr()
    assert main(_watch_argv(demo, run, tmp_path / "a", session_store)) == 1
    printed = capsys.readouterr().out
    assert [int(ln.split()[1]) for ln in printed.splitlines() if ln.strip().startswith("step")] == [30, 40, 50]
    assert "checkpoint-50 never got its trainer_state.json: not gated" in printed
    assert _state_steps(tmp_path / "a") == [10, 20, 30, 40]
    # --stop-on-fail: STOP in the run folder at the first FAIL, exit 1, nothing after it gated
    (run / "DONE").unlink()
    assert main(_watch_argv(demo, run, tmp_path / "b", session_store, "--stop-on-fail")) == 1
    assert _state_steps(tmp_path / "b") == [10, 20, 30]
    assert "checkpoint-30" in (run / "STOP").read_text()


def test_watch_bad_input_is_one_line(demo, session_store, tmp_path, capsys):
    run = tmp_path / "run"
    _copy_run(demo, run, PLAN[:1])
    (run / "DONE").write_text("")
    out = tmp_path / "w"
    assert main(_watch_argv(demo, run, out, session_store, "--until-step", "-1")) == 2
    assert not out.exists()
    assert main(_watch_argv(demo, tmp_path / "no" / "run", out, session_store)) == 2
    assert "cannot appear" in capsys.readouterr().err
    assert main(_watch_argv(demo, run, out, session_store)) == 0
    other = ["--base", str(demo["ft-answer-only"])]
    argv = _watch_argv(demo, run, out, session_store)
    argv[1:3] = other
    assert main(argv) == 2
    assert "give another --out" in capsys.readouterr().err
