"""Bad input: one line naming the problem on stderr, exit 2, no report written."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.cli import main


def _run(capsys, tmp_path: Path, *args: str) -> tuple[int, str]:
    out = tmp_path / "report"
    code = main(["compare", *args, "--out", str(out), "--store", str(tmp_path / "store")])
    err = capsys.readouterr().err.strip()
    assert not out.exists(), "no report may be written on bad input"
    return code, err


def _one_line(err: str) -> str:
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("regress: error: ")
    return lines[0]


@pytest.fixture
def fake_base(tmp_path: Path) -> Path:
    """A folder that is not a checkpoint at all."""
    d = tmp_path / "not-a-ckpt"
    d.mkdir()
    (d / "README.txt").write_text("hello")
    return d


def test_missing_checkpoint(capsys, tmp_path, fake_base):
    code, err = _run(capsys, tmp_path, "--base", str(tmp_path / "nope"), "--model", str(fake_base))
    assert code == 2
    assert "checkpoint not found" in _one_line(err) and "nope" in err


def test_folder_that_is_not_a_checkpoint(capsys, tmp_path, fake_base, demo):
    code, err = _run(capsys, tmp_path, "--base", str(demo["base"]), "--model", str(fake_base))
    assert code == 2
    assert "no config.json" in _one_line(err)


def test_unknown_suite(capsys, tmp_path, demo):
    code, err = _run(capsys, tmp_path, "--base", str(demo["base"]), "--model", str(demo["base"]), "--suite", "nosuch")
    assert code == 2
    assert "unknown suite 'nosuch'" in _one_line(err)


def test_unknown_task(capsys, tmp_path, demo):
    suite = tmp_path / "s.yaml"
    suite.write_text("name: s\ntasks: [no_such_task_xyz]\n")
    code, err = _run(capsys, tmp_path, "--base", str(demo["base"]), "--model", str(demo["base"]), "--suite", str(suite))
    assert code == 2
    assert "unknown task 'no_such_task_xyz'" in _one_line(err)


def test_malformed_suite_names_file_and_line(capsys, tmp_path, demo):
    suite = tmp_path / "bad.yaml"
    suite.write_text("name: s\ntasks: [a, b\nversion: 1\n")
    code, err = _run(capsys, tmp_path, "--base", str(demo["base"]), "--model", str(demo["base"]), "--suite", str(suite))
    assert code == 2
    line = _one_line(err)
    assert "bad.yaml:" in line and "malformed YAML" in line
