"""`--noise-floor`, `regress trend` and `make regress`-style demo comparison, on the real demo checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.cli import main

pytestmark = pytest.mark.slow


def test_noise_floor_is_zero_on_a_bitwise_repeatable_engine(demo, session_store, tmp_path):
    out = tmp_path / "rep"
    code = main(["compare", "--base", str(demo["base"]), "--model", str(demo["ft-identical"]), "--suite", "demo",
                 "--store", str(session_store), "--out", str(out), "--noise-floor", "--limit", "60"])  # fmt: skip
    assert code == 0
    s = json.loads((out / "summary.json").read_text())
    nf = s["noise_floor"]
    assert nf["n"] == 300 and nf["changed"] == 0 and nf["bitwise_repeatable"] is True
    assert nf["batch_sizes"] is None  # hf batches by memory: the rerun has a third of the budget
    assert "noise floor: 0 of 300" in (out / "report.md").read_text()
    assert "bitwise repeatable" in (out / "report.html").read_text()


def test_trend_picks_the_last_passing_checkpoint(demo, session_store, tmp_path, capsys):
    out = tmp_path / "trend"
    # a "training run": step 100 is the base itself, step 200 forgets and loops
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint-100").symlink_to(demo["ft-identical"])
    (run / "checkpoint-200").symlink_to(demo["ft-all-tokens"])
    code = main(["trend", "--base", str(demo["base"]), str(run / "checkpoint-200"), str(run / "checkpoint-100"),
                 "--suite", "demo", "--store", str(session_store), "--out", str(out)])  # fmt: skip
    assert code == 1  # the newest checkpoint (step 200) fails
    t = json.loads((out / "trend.json").read_text())
    assert [p["step"] for p in t["points"]] == [100, 200] and t["ordered_by"] == "step"
    assert [p["verdict"] for p in t["points"]] == ["PASS", "FAIL"]
    assert t["last_passing"].endswith("checkpoint-100")
    html = (out / "trend.html").read_text()
    assert "data:image/png;base64," in html and "checkpoint-100" in html
    assert "last checkpoint that still passes" in capsys.readouterr().out
    # stored records answer again; with only the passing checkpoint the exit is 0
    code = main(["trend", "--base", str(demo["base"]), str(run / "checkpoint-100"),
                 "--suite", "demo", "--store", str(session_store), "--out", str(tmp_path / "trend2")])  # fmt: skip
    assert code == 0
    # a name without a step ("final"; "llama3-8b" has numbers but is not a checkpoint-N): the
    # order given, and the newest is the last given
    (run / "final").symlink_to(demo["ft-identical"])
    given = [str(run / n) for n in ("checkpoint-100", "checkpoint-200", "final")]
    code = main(["trend", "--base", str(demo["base"]), *given,
                 "--suite", "demo", "--store", str(session_store), "--out", str(tmp_path / "trend3")])  # fmt: skip
    assert code == 0  # "final" passes (keyed by its position, 2, against steps 100 and 200, it sorted first)
    t = json.loads((tmp_path / "trend3" / "trend.json").read_text())
    assert [Path(p["path"]).name for p in t["points"]] == ["checkpoint-100", "checkpoint-200", "final"]
    assert [p["step"] for p in t["points"]] == [0, 1, 2] and t["last_passing"].endswith("checkpoint-100")
    assert t["ordered_by"] == "position given" and "position given" in (tmp_path / "trend3" / "trend.html").read_text()
