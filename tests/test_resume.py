"""Resume: a real run (demo base, the CLI in a subprocess) interrupted at several points.

The run is stopped with Ctrl-C (SIGINT: exit 130, says how to resume), then killed with
SIGKILL at two later points, then left with a torn last line (a kill mid-write); each
restart is the same command. The finished run must have recomputed nothing (every answer
in ``answers.jsonl`` once; the last restart's backend handled exactly the missing ones),
lost nothing, and its records must equal those of an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from harness.cli import main
from tests.conftest import REPO

LIMIT, CHUNK = "24", "2"  # many small chunks, so a signal lands mid-run even on a fast machine


def _argv(base: Path, suite: Path, store: Path) -> list[str]:
    return ["-v", "run", "--model", str(base), "--suite", str(suite), "--limit", LIMIT, "--chunk-size", CHUNK,
            "--store", str(store)]  # fmt: skip


def _answers(store: Path) -> list[bytes]:
    files = list(store.glob("*/answers.jsonl"))
    return files[0].read_bytes().splitlines(keepends=True) if files else []


def _records(store: Path) -> list[dict]:
    (f,) = store.glob("*/records.jsonl")
    return [json.loads(x) for x in f.read_text().splitlines()]


class Run:
    """``regress run`` in a subprocess, stopped by a signal once it has stored ``at`` answers."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.p = subprocess.Popen(
            [sys.executable, "-m", "harness.cli", *argv], cwd=REPO, env=env, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
            # a background job of a non-interactive shell ignores SIGINT, and Python keeps an
            # inherited SIG_IGN: restore the default so Ctrl-C reaches regress as it would a user's
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )  # fmt: skip

    def stop_at(self, store: Path, at: int, sig: signal.Signals) -> tuple[int, str]:
        deadline = time.monotonic() + 300
        while len(_answers(store)) < at and self.p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert self.p.poll() is None, f"the run ended before it was stopped: {self.p.communicate()[1][-2000:]}"
        self.p.send_signal(sig)
        _, err = self.p.communicate(timeout=120)
        return self.p.returncode, err

    def finish(self) -> tuple[int, str]:
        _, err = self.p.communicate(timeout=600)
        return self.p.returncode, err


def _backend_requests(err: str) -> int:
    m = re.search(r"(\d+) requests answered by the backend", err)
    assert m, err[-2000:]
    return int(m.group(1))


def test_interrupted_run_resumes_without_recomputing(tmp_path, base_ckpt, monkeypatch):
    from tests.test_faults import write_suite

    cache = tmp_path / "hash-cache"
    monkeypatch.setenv("REGRESS_CACHE", str(cache))
    env = {**os.environ, "REGRESS_CACHE": str(cache), "PYTHONUNBUFFERED": "1"}
    suite = write_suite(tmp_path)

    # the uninterrupted run (in this process: it only sets the expectation)
    ref = tmp_path / "ref"
    assert main(_argv(base_ckpt, suite, ref)) == 0
    total = len(_answers(ref))
    assert total >= 30, "the run must span many chunks"
    store = tmp_path / "store"

    # 1. Ctrl-C after the first chunk: clean stop, a resume hint, exit 130
    code, err = Run(_argv(base_ckpt, suite, store), env).stop_at(store, 1, signal.SIGINT)
    assert code == 130, err[-2000:]
    last = [x for x in err.splitlines() if x.strip()][-1]
    assert last.startswith("regress: interrupted") and "run the same command again to resume" in last, last
    done = len(_answers(store))
    assert 0 < done < total

    # 2. SIGKILL at two later points, each after more progress
    for frac in (0.4, 0.75):
        run = Run(_argv(base_ckpt, suite, store), env)
        code, _ = run.stop_at(store, max(done + 1, int(frac * total)), signal.SIGKILL)
        assert code == -signal.SIGKILL
        assert not list(store.glob("*/records.jsonl")), "a killed run must not leave records"
        now = len(_answers(store))
        assert done < now < total
        done = now

    # 3. a kill in the middle of a write leaves a torn last line
    (answers_file,) = store.glob("*/answers.jsonl")
    with answers_file.open("ab") as f:
        f.write(b'{"t": "gen", "k": "0123456789abcdef", "v": {"text": "12')

    # 4. the same command finishes the run: only the missing answers are computed
    code, err = Run(_argv(base_ckpt, suite, store), env).finish()
    assert code == 0, err[-2000:]
    assert "dropped" in err and "unfinished write" in err
    assert _backend_requests(err) == total - done, "finished items were recomputed (or some were lost)"
    keys = [json.loads(x)["k"] for x in _answers(store)]
    assert len(keys) == len(set(keys)) == total, "every answer stored exactly once"
    assert set(keys) == {json.loads(x)["k"] for x in _answers(ref)}
    assert _records(store) == _records(ref), "resumed records differ from an uninterrupted run's"

    # 5. killed after the last answer but before the records: nothing left to compute
    (records_file,) = store.glob("*/records.jsonl")
    records_file.unlink()
    from harness import pipeline

    results = []
    evaluate = pipeline.evaluate
    monkeypatch.setattr(pipeline, "evaluate", lambda *a, **k: results.append(evaluate(*a, **k)) or results[-1])
    assert main(_argv(base_ckpt, suite, store)[1:]) == 0
    (res,) = results
    assert not res.reused and res.backend_calls == 0 and res.backend_requests == 0, "the backend must not be started"
    assert _records(store) == _records(ref)
