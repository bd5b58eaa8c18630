"""Options: one declaration per option (harness/config.py) makes the flags, the config and its checks.

Table-driven, no model: every flag of the hand-written parser this replaced parses to the same
``RunConfig``; every invalid value is one line on stderr and exit 2, from ``regress`` and from
the dataclasses built in code, before anything reads a checkpoint or writes to the store.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from pathlib import Path

import pytest

from harness.cli import build_parser, main
from harness.config import BackendOptions, RunConfig
from harness.errors import RegressError

# The run flags as the hand-written parser had them: flag, a valid value, the field it sets, the value it holds.
TODAY = [
    ("--suite", ["s.yaml"], "suite", "s.yaml"),
    ("--backend", ["vllm"], "backend", "vllm"),
    ("--store", ["st"], "store_dir", "st"),
    ("--limit", ["20"], "limit", 20),
    ("--tasks", ["gsm8k,mmlu"], "tasks", "gsm8k,mmlu"),  # issue 13: a suite of task names
    ("--data", ["bench"], "data", "bench"),  # issue 13: data root of registered tasks
    ("--batch-size", ["8"], "options.batch_size", 8),
    ("--dtype", ["bfloat16"], "options.dtype", "bfloat16"),
    ("--device", ["cuda:1"], "options.device", "cuda:1"),
    ("--max-model-len", ["4096"], "options.max_model_len", 4096),
    ("--tensor-parallel-size", ["2"], "options.tensor_parallel_size", 2),
    ("--data-parallel-size", ["4"], "options.data_parallel_size", 4),
    ("--gpu-memory-utilization", ["0.5"], "options.gpu_memory_utilization", 0.5),
    ("--base-url", ["http://a"], "options.base_urls", ("http://a",)),
    ("--api-model", ["m"], "options.api_model", "m"),
    ("--concurrency", ["3"], "options.concurrency", 3),
    ("--chunk-size", ["100"], "options.chunk_size", 100),
    ("--trust-remote-code", [], "options.trust_remote_code", True),
    ("--batch-memory-mib", ["512"], "options.batch_memory_mib", 512),  # issue 22: hf batches by memory
    ("--no-drafts", [], "no_drafts", True),  # issue 22: drafting from the base's answers
    ("--verify-drafts", [], "verify_drafts", True),
    ("--knowledge-probe", ["all"], "knowledge_probe", "all"),  # issue 21: the knowledge probe
]
MORE_VALID = [  # edges and the other spellings of each flag
    ("--dtype", ["auto"], "options.dtype", "auto"),
    ("--dtype", ["float32"], "options.dtype", "float32"),
    ("--dtype", ["float16"], "options.dtype", "float16"),
    ("--backend", ["openai"], "backend", "openai"),
    ("--backend", ["hf"], "backend", "hf"),
    ("--gpu-memory-utilization", ["1"], "options.gpu_memory_utilization", 1.0),
    ("--batch-size", ["1"], "options.batch_size", 1),
    ("--limit", ["1"], "limit", 1),
]
RUN_COMMANDS = {
    "compare": ["compare", "--base", "/nonexistent/base", "--model", "/nonexistent/cand"],
    "run": ["run", "--model", "/nonexistent/cand"],
    "trend": ["trend", "--base", "/nonexistent/base", "/nonexistent/checkpoint-1"],
    "demo": ["demo", "--compare"],
    "watch": ["watch", "--base", "/nonexistent/base", "/nonexistent/run"],
}


def _field(cfg: RunConfig, path: str) -> object:
    obj: object = cfg
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def _config(argv: list[str]) -> RunConfig:
    return RunConfig.from_args(build_parser().parse_args(argv))


def _run_flags(parser: argparse.ArgumentParser, cmd: str) -> set[str]:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {s for a in sub.choices[cmd]._actions for s in a.option_strings}


@pytest.mark.parametrize("cmd", list(RUN_COMMANDS))
def test_every_flag_of_today_is_generated(cmd):
    flags = _run_flags(build_parser(), cmd) - _run_flags(build_parser(), "gate")  # less the command's own
    logs = {"--base-samples", "--model-samples", "--tokenizer", "--allow-prompt-change"}  # lm-eval output folders
    no_effect = "--allow-no-effect"
    own = {"compare": {"--base", "--model", "--out", "--noise-floor", no_effect, *logs}, "run": {"--model", "--base"},
           "trend": {"--base", "--out", "--tokenizer", no_effect},
           "demo": {"--out", "--compare", "--out-reports", "--real"},
           "watch": {"--base", "--out", "--until-step", "--sentinel", "--stop-on-fail", "--poll"}}  # fmt: skip
    assert flags - own[cmd] == {flag for flag, *_ in TODAY}


@pytest.mark.parametrize(("flag", "value", "path", "expected"), TODAY + MORE_VALID)
def test_each_flag_sets_its_field_and_only_it(flag, value, path, expected):
    base = ["run", "--model", "m"]
    cfg = _config([*base, flag, *value])
    assert _field(cfg, path) == expected
    # every other field keeps the value it has with no flag at all
    default = _config(base)
    assert all(_field(cfg, p) == _field(default, p) for _, _, p, _ in TODAY if p != path)


def test_defaults_are_todays(monkeypatch):
    monkeypatch.delenv("REGRESS_STORE", raising=False)
    assert _config(["run", "--model", "m"]) == RunConfig(suite="demo", backend="hf", store_dir="baselines")
    assert BackendOptions() == BackendOptions(tensor_parallel_size=1, data_parallel_size=1, concurrency=16)
    monkeypatch.setenv("REGRESS_STORE", "/elsewhere")  # read when the parser is built, as before
    assert _config(["run", "--model", "m"]).store_dir == "/elsewhere"


def test_all_flags_at_once_and_repeated_base_url():
    argv = ["compare", "--base", "b", "--model", "m"]
    for flag, value, *_ in TODAY:
        argv += [flag, *value]
    argv += ["--base-url", "http://b"]
    cfg = _config(argv)
    for _, _, path, expected in TODAY:
        if path != "options.base_urls":
            assert _field(cfg, path) == expected, path
    assert cfg.options.base_urls == ("http://a", "http://b")


INVALID = [  # argv tail, what the one line says
    (["--batch-size", "0"], "--batch-size must be at least 1 (got 0)"),
    (["--batch-size", "-4"], "--batch-size must be at least 1 (got -4)"),
    (["--limit", "0"], "--limit must be at least 1 (got 0)"),
    (["--limit", "-1"], "--limit must be at least 1 (got -1)"),
    (["--chunk-size", "0"], "--chunk-size must be at least 1"),
    (["--concurrency", "0"], "--concurrency must be at least 1"),
    (["--tensor-parallel-size", "0"], "--tensor-parallel-size must be at least 1"),
    (["--data-parallel-size", "-1"], "--data-parallel-size must be at least 1"),
    (["--gpu-memory-utilization", "0"], "--gpu-memory-utilization must be above 0 and at most 1 (got 0.0)"),
    (["--gpu-memory-utilization", "1.01"], "--gpu-memory-utilization must be above 0 and at most 1"),
    (["--gpu-memory-utilization", "nan"], "--gpu-memory-utilization must be above 0 and at most 1 (got nan)"),
    (["--max-model-len", "0"], "--max-model-len must be at least 1"),
    (["--dtype", "half"], "unknown dtype 'half'; choose one of: auto, float32, bfloat16, float16"),
    (["--backend", "nosuch"], "unknown backend 'nosuch'; choose one of: hf, vllm, openai"),
    # argparse's own errors, one line as well
    (["--batch-size", "x"], "argument --batch-size: invalid int value: 'x'"),
    (["--gpu-memory-utilization", "most"], "argument --gpu-memory-utilization: invalid float value: 'most'"),
    (["--limit"], "argument --limit: expected one argument"),
    (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
]


def _one_line_error(capsys, argv: list[str]) -> str:
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 2
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("regress: error: ")
    return lines[0].removeprefix("regress: error: ")


@pytest.mark.parametrize("cmd", list(RUN_COMMANDS))
@pytest.mark.parametrize(("tail", "says"), INVALID)
def test_invalid_option_is_one_line_before_anything_runs(capsys, tmp_path: Path, cmd, tail, says):
    # the checkpoints do not exist: the option error must come before any checkpoint is read
    store, out = tmp_path / "store", tmp_path / "out"
    argv = [*RUN_COMMANDS[cmd], "--store", str(store), *tail]
    if cmd != "run":
        argv += ["--out", str(out)]  # demo's --out is where it would build the checkpoints
    if cmd == "demo":
        argv += ["--out-reports", str(tmp_path / "reports")]
    assert says in _one_line_error(capsys, argv)
    assert list(tmp_path.iterdir()) == [], "nothing written to the store, the reports or the demo folder"


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["compare", "--base", "b"], "give one of --model CKPT and --model-samples DIR"),
        (["trend", "--base", "b"], "the following arguments are required: checkpoints"),
        ([], "the following arguments are required: cmd"),
        (["nosuch"], "argument cmd: invalid choice: 'nosuch'"),
        (["gate"], "the following arguments are required: report_dir"),
        (["baselines", "prune", "--older-than", "x"], "argument --older-than: invalid float value: 'x'"),
    ],
)
def test_argparse_errors_are_one_line(capsys, argv, says):
    assert says in _one_line_error(capsys, argv)


def test_a_missing_checkpoint_is_still_its_own_error(capsys, tmp_path: Path):
    # valid options: the next check (the checkpoint) speaks, as before
    argv = [*RUN_COMMANDS["compare"], "--store", str(tmp_path / "s"), "--out", str(tmp_path / "o"), "--batch-size", "1"]
    assert "checkpoint not found" in _one_line_error(capsys, argv)


@pytest.mark.parametrize("argv", [["-h"], ["compare", "-h"], ["baselines", "prune", "--help"]])
def test_help_still_works(capsys, argv):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 0
    assert "usage: regress" in capsys.readouterr().out


CODE_INVALID = [  # the same checks for a config built in code; a field with no flag is named by itself
    (lambda: BackendOptions(batch_size=0), "--batch-size must be at least 1 (got 0)"),
    (lambda: BackendOptions(dtype="fp8"), "unknown dtype 'fp8'"),
    (lambda: BackendOptions(gpu_memory_utilization=math.inf), "--gpu-memory-utilization must be above 0"),
    (lambda: BackendOptions(tensor_parallel_size=0), "--tensor-parallel-size must be at least 1"),
    (lambda: BackendOptions(max_retries=-1), "max_retries must be at least 0 (got -1)"),
    (lambda: RunConfig(suite="demo", limit=0), "--limit must be at least 1 (got 0)"),
    (lambda: RunConfig(suite="demo", backend="tgi"), "unknown backend 'tgi'"),
    (lambda: RunConfig(suite="demo", noise_variant=-1), "noise_variant must be at least 0"),
    (lambda: dataclasses.replace(BackendOptions(batch_size=8), batch_size=0), "--batch-size must be at least 1"),
]


@pytest.mark.parametrize(("make", "says"), CODE_INVALID)
def test_dataclasses_check_their_values(make, says):
    with pytest.raises(RegressError) as e:
        make()
    assert says in str(e.value)
    assert "\n" not in str(e.value)


def test_unset_means_the_backends_default():
    # None is never range-checked: it stands for "the backend decides"
    opts = BackendOptions(batch_size=None, dtype=None, max_model_len=None, gpu_memory_utilization=None)
    assert opts.batch_size is None and opts.dtype is None
    assert RunConfig(suite="demo", limit=None, options=opts).limit is None


def _subparsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """Every (sub)command's parser, nested ones (baselines list|show|prune) included."""
    out = []
    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction):
            for p in a.choices.values():
                out += [p, *_subparsers(p)]
    return out


def test_every_subcommand_flag_is_generated_from_an_option_field():
    """Issue 19: no hand-written flag left in a subcommand: each one is an option(...) field."""
    from harness import cli_args
    from harness.options import _specs, flag_of
    from harness.sft import TokenRule
    from harness.watch import WatchArgs

    classes = [RunConfig, BackendOptions, TokenRule, WatchArgs] + [
        c for c in vars(cli_args).values() if isinstance(c, type) and dataclasses.is_dataclass(c)
    ]
    declared = {flag_of(f, spec) for c in classes for f, spec in _specs(c)}
    parsers = _subparsers(build_parser())
    assert len(parsers) == 11  # run compare gate baselines(list show prune) trend watch demo tokens
    for p in parsers:
        for a in p._actions:
            if isinstance(a, argparse._HelpAction | argparse._SubParsersAction):
                continue
            names = a.option_strings or [a.dest]
            assert set(names) <= declared, (p.prog, names)


def test_tokens_flags_are_checked_before_anything_runs(tmp_path, capsys):
    for argv, says in [(["--batch-size", "0"], "--batch-size must be at least 1 (got 0)"),
                       (["--min-prob", "2"], "--min-prob must be at least 0 and at most 1 (got 2.0)"),
                       (["--outlier-k", "0"], "--outlier-k must be above 0 (got 0.0)")]:  # fmt: skip
        code = main(["tokens", "--base", str(tmp_path / "no"), "--data", str(tmp_path / "no.jsonl"), *argv])
        assert code == 2 and capsys.readouterr().err.strip() == f"regress: error: {says}"
