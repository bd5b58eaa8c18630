"""What `regress compare` prints (issue 15): the verdict block names config findings with
their fix, and third-party chatter stays out of the log unless -v.

The slow tests run the real CLI in a subprocess on the demo checkpoints (--limit keeps it
to seconds) and read everything it wrote to stdout and stderr; the fast ones check the
quieting and the verdict block in-process.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# Everything regress itself prints on a compare: the verdict block on stdout (cli.verdict_lines)
# and, on stderr, its one-line errors and warnings ("regress: ...") and the demo build's notes.
REGRESS_LINES = re.compile(
    r"(PASS|WARN|FAIL): .+ vs .+ \(.+\)"
    r"|  \[(FAIL|WARN)\] \S+ \w+: .+"
    r"|  \[config\] .+"
    r"|    fix: .+"
    r"|  \[why\] \S+: \d+ lost: .+"  # issue 21: lost items by cause, then each cause's remedy
    r"|    [a-z][a-z ,]*: .+"
    r"|  \[warning\] .+"
    r"|  \.\.\. and \d+ more warnings \(summary\.json\)"
    r"|  report: .+report\.html"
    r"|regress: .+"
    r"|[^:\n]+: \w+:? [\d,]+/[\d,]+ requests.*"  # harness.progress: "base: generating: 400/400 requests, ..."
    r"|[^:\n]+: generating \(\d+ drafted, [^)]*\): [\d,]+/[\d,]+ requests.*"  # drafting from the base (issue 22)
    r"|building the demo .+|waiting for another build of the demo .+"
)


def _compare(tmp: Path, base: Path, model: Path, *extra: str, verbose: bool = False) -> tuple[int, str, str]:
    argv = [sys.executable, "-m", "harness.cli", *(["-v"] if verbose else []), "compare", "--base", str(base),
            "--model", str(model), "--suite", "demo", "--store", str(tmp / "store"), "--out", str(tmp / "report"),
            *extra]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TQDM_", "TRANSFORMERS_VERBOSITY", "DATASETS_V"))}
    p = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    return p.returncode, p.stdout, p.stderr


def _foreign(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip() and not REGRESS_LINES.fullmatch(line)]


@pytest.mark.slow
def test_compare_prints_only_regress_lines(demo, tmp_path):
    code, out, err = _compare(tmp_path, demo["base"], demo["ft-identical"], "--limit", "20")
    assert code == 0, err
    assert out.startswith(("PASS: ", "WARN: ")) and "  report: " in out
    assert _foreign(out + err) == [], "third-party lines in a quiet compare"


@pytest.mark.slow
def test_verbose_lets_third_party_lines_through(demo, tmp_path):
    code, out, err = _compare(tmp_path, demo["base"], demo["ft-identical"], "--limit", "5", verbose=True)
    assert code == 0, err
    # regress's own INFO lines (store use) show with -v, and so do the libraries' (progress bars, logs)
    own_info = re.compile(r"\S+: \d+ requests answered by the backend .+")
    assert [line for line in _foreign(out + err) if not own_info.fullmatch(line)], "nothing third-party with -v"


@pytest.mark.slow
def test_config_trap_fix_is_on_the_terminal(demo, tmp_path):
    """ft-identical whose generation_config and tokenizer eos no longer include the chat
    template's end-of-turn token (id 2, '<|end|>'): generation would never stop on it."""
    trap = tmp_path / "ft-eot-trap"
    shutil.copytree(demo["ft-identical"], trap)
    gen = json.loads((trap / "generation_config.json").read_text())
    gen["eos_token_id"] = 1  # '<s>': the template's turn end (2) is gone
    (trap / "generation_config.json").write_text(json.dumps(gen))
    # the tokenizer's eos is a stop id too (EotSetup.stop_ids), so it must not be '<|end|>' either
    tc = json.loads((trap / "tokenizer_config.json").read_text())
    tc["eos_token"] = "<s>"
    (trap / "tokenizer_config.json").write_text(json.dumps(tc))
    code, out, err = _compare(tmp_path, demo["base"], trap, "--limit", "5")
    assert code in (0, 1), err
    assert f"  [config] candidate {trap}" in out and "not a stop token" in out
    assert "    fix: add 2 to eos_token_id in generation_config.json" in out.splitlines()
    assert out.index("[config]") < out.index("  report: ")
    assert _foreign(out + err) == []


def test_quiet_third_party_silences_the_known_chatter(monkeypatch, capfd):
    """The lines issue 15 names, emitted the way their libraries emit them, print nothing
    after the CLI's quieting; regress's own warnings still print."""
    import logging
    import warnings

    from datasets.utils import logging as ds_logging
    from transformers.utils import logging as tf_logging

    from harness import quiet

    for var in quiet.QUIET_ENV:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(quiet, "_quiet", quiet.is_quiet())  # put back after the test
    levels = {n: logging.getLogger(n).level for n in quiet.THIRD_PARTY}
    tf_level, ds_level = tf_logging.get_verbosity(), ds_logging.get_verbosity()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            quiet.quiet_third_party(verbose=False)
            tf_logging.get_logger("transformers.generation.utils").warning(
                "Both `max_new_tokens` (=48) and `max_length`(=20) seem to have been set."
            )
            ds_logging.get_logger("datasets.load").warning("Using the latest cached version of the dataset since x")
            logging.getLogger("lm_eval.evaluator").warning("lm-eval chatter")
            warnings.warn_explicit("a library's FutureWarning", FutureWarning, "task.py", 1, module="lm_eval.api.task")
            logging.getLogger("harness.pipeline").warning("regress: warning: tokenizers differ")
            import os

            assert os.environ["TQDM_DISABLE"] == "1" and os.environ["TRANSFORMERS_VERBOSITY"] == "error"
    finally:
        for n, lv in levels.items():
            logging.getLogger(n).setLevel(lv)
        tf_logging.set_verbosity(tf_level)
        tf_logging.enable_progress_bar()
        ds_logging.set_verbosity(ds_level)
    out, err = capfd.readouterr()
    text = out + err
    assert "max_new_tokens" not in text and "latest cached" not in text
    assert "lm-eval chatter" not in text and "FutureWarning" not in text


def test_verdict_block_names_findings_with_their_fix(tmp_path):
    from dataclasses import replace

    from _report_fakes import fake_comparison

    from harness.cli import MAX_TERMINAL_WARNINGS, verdict_lines

    finding = ("candidate /ck: the chat template ends assistant turns with '<|end|>' (id 2), which is not a stop "
               "token (generation_config eos [1], tokenizer eos 1); generation will not stop. "
               "Fix: add 2 to eos_token_id in generation_config.json")  # fmt: skip
    cmp = fake_comparison(200, hostile=False)
    many = tuple(f"note {i}" for i in range(MAX_TERMINAL_WARNINGS + 3))
    cmp = replace(cmp, warnings=(finding, *many), config_check=(finding,))
    lines = verdict_lines(cmp, tmp_path)
    assert lines[0].startswith(f"{cmp.verdict.level}: ")
    assert lines[1 : 1 + len(cmp.verdict.reasons)] == [f"  {r}" for r in cmp.verdict.reasons]
    i = lines.index("    fix: add 2 to eos_token_id in generation_config.json")
    assert lines[i - 1].startswith("  [config] candidate /ck: the chat template") and "Fix:" not in lines[i - 1]
    assert sum(line.startswith("  [warning] ") for line in lines) == MAX_TERMINAL_WARNINGS
    assert lines[-2] == "  ... and 3 more warnings (summary.json)"
    assert lines[-1] == f"  report: {tmp_path / 'report.html'}"
    assert all(REGRESS_LINES.fullmatch(line) for line in lines)
