"""One registration each: a toy detector and a toy gate rule, each defined in one place (here),
reach every output on the real demo checkpoints: summary.json (rates, rules, policy, schema),
report.html (column, card, explorer filter), report.md, junit.xml, items.parquet, and
``regress gate`` (re-judging a stored report under a policy that sets their keys). Nothing
else is edited to add them, and nothing of them is left once their block ends."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import numpy as np
import pandas as pd
import pytest

from harness import gate, registry
from harness.cli import main
from harness.registry import Detector, Evidence, Flags, Outcome, Rule, Threshold, Thresholds
from harness.report.summary import schema
from harness.types import TaskRow

pytestmark = pytest.mark.slow

LIMIT = "20"


def _sevens(items: pd.DataFrame) -> Flags:
    """Toy: an output with a 7 in it."""
    return Flags(items["output_base"].str.contains("7").to_numpy(), items["output_cand"].str.contains("7").to_numpy())


def _few_items(t: registry.GatedRow, ev: Evidence, th: Thresholds) -> Outcome | None:
    """Toy: a task with more than ``toy_max_items`` items (off by default: null)."""
    if not isinstance(t, TaskRow) or th.toy_max_items is None:
        return None
    return Outcome(t.n > th.toy_max_items, t.n, th.toy_max_items, f"{t.n} items; limit {th.toy_max_items:g}")


TOY_DETECTOR = Detector(
    name="sevens", flag=_sevens, label="sevens", column="has 7", plot="Outputs with a 7",
    description="generated items whose output has a 7", filter="sevens only", badge="has a 7", severity="WARN",
    max_rise=0.5,
)  # fmt: skip
TOY_LIMIT = Threshold("toy_max_items", None, optional=True)
TOY_RULE = Rule("toy_items", _few_items, "WARN", (TOY_LIMIT,))


def _compare(base: Path, model: Path, store: Path, out: Path) -> int:
    return main(["compare", "--base", str(base), "--model", str(model), "--suite", "demo", "--limit", LIMIT,
                 "--store", str(store), "--out", str(out)])  # fmt: skip


def _outputs(d: Path) -> tuple[dict, str, str, str, pd.DataFrame]:  # type: ignore[type-arg]
    summary = json.loads((d / "summary.json").read_text())
    texts = [(d / name).read_text() for name in ("report.html", "report.md", "junit.xml")]
    return summary, texts[0], texts[1], texts[2], pd.read_parquet(d / "items.parquet")


def test_toy_detector_and_rule_reach_every_output(demo, session_store, tmp_path: Path) -> None:
    before = tmp_path / "before"
    _compare(demo["base"], demo["ft-answer-only"], session_store, before)  # a report written without them
    with registry.registered(TOY_DETECTOR, TOY_RULE):
        d = tmp_path / "with"
        _compare(demo["base"], demo["ft-answer-only"], session_store, d)
        summary, html, md, junit, items = _outputs(d)
        jsonschema.validate(summary, schema())
        task = summary["tasks"][0]
        assert {"sevens_rate_base", "sevens_rate_candidate"} <= set(task)
        assert {"sevens", "toy_items"} <= set(summary["policy"]["severity"])
        assert {"max_sevens_rise", "toy_max_items"} <= set(summary["policy"])
        assert {r["rule"] for r in summary["rules"]} >= {"sevens"}  # toy_items is off (no limit set)
        assert {"sevens_base", "sevens_cand"} <= set(items.columns)
        flagged = items[items["kind"] == "generate_until"]
        assert (flagged["sevens_cand"] == flagged["output_cand"].str.contains("7")).all()
        rate = flagged[flagged["task"] == task["name"]]["sevens_cand"].mean()
        assert task["sevens_rate_candidate"] == pytest.approx(rate)
        assert 'id="f-sevens"' in html and "sevens only" in html and "has 7" in html and "Outputs with a 7" not in md
        assert "| has 7 |" in md
        assert 'name="sevens"' in junit

        policy = tmp_path / "p.yaml"
        policy.write_text("toy_max_items: 10\nseverity: {toy_items: FAIL}\n")
        assert main(["gate", str(d), "--policy", str(policy)]) == 1
        summary, html, md, junit, _ = _outputs(d)
        assert summary["verdict"] == "FAIL" and summary["policy"]["toy_max_items"] == 10
        assert any(" toy_items: " in r for r in summary["reasons"])
        assert "`toy_items`" in md and 'name="toy_items"' in junit and "toy_items" in html
        jsonschema.validate(summary, schema())

        main(["gate", str(before)])  # the detector registered since: its columns are filled in
        summary, _, md, _, items = _outputs(before)
        assert "sevens_rate_candidate" in summary["tasks"][0] and "sevens_cand" in items and "| has 7 |" in md
    assert "sevens" not in [x.name for x in registry.detectors()] and "toy_max_items" not in registry.thresholds()
    assert "toy_items" not in gate.DEFAULT_SEVERITY and "toy_items" not in schema()["$defs"]["rule"]["properties"][
        "rule"]["enum"]  # fmt: skip
    # a report judged under a rule that is gone names the key it does not know (exit 2)
    assert main(["gate", str(d)]) == 2


def test_registering_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="registered already"):
        registry.register_rule(Rule("acc_drop", _few_items, "WARN"))
    with pytest.raises(ValueError, match="registered already"):
        registry.register_threshold(Threshold("alpha", 0.1))
    with registry.registered(TOY_DETECTOR), pytest.raises(ValueError, match="registered already"):
        registry.register_detector(TOY_DETECTOR)
    assert np.all([d.name != "sevens" for d in registry.detectors()])
