"""Premature endings on real demo checkpoints (issue 15's must-hold).

ft-early-eot (harness/demo/early_eot.py) was fine-tuned to answer about half of its sort
examples with the end-of-turn token alone: the gate must name premature endings on
demo_sort, and not on ft-identical or ft-answer-only, which end their answers as the base does.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest

from harness.cli import main

pytestmark = pytest.mark.slow

LIMIT = "100"  # items per task: enough for a 50% rate to be significant, and a few minutes on 2 cores


@pytest.fixture(scope="module")
def early_eot(demo):
    from harness.demo.early_eot import build_early_eot

    return build_early_eot(demo["base"].parent)


def _compare(tmp_path_factory, session_store, base, model, name):
    d = tmp_path_factory.mktemp("premature") / name
    main(["compare", "--base", str(base), "--model", str(model), "--suite", "demo", "--limit", LIMIT,
          "--store", str(session_store), "--out", str(d)])  # fmt: skip
    return json.loads((d / "summary.json").read_text()), d


def _premature(summary):
    return {r["task"] for r in summary["rules"] if r["rule"] == "premature" and r["fired"]}


def test_early_eot_is_flagged_on_sort(demo, early_eot, session_store, tmp_path_factory):
    s, d = _compare(tmp_path_factory, session_store, demo["base"], early_eot, "ft-early-eot")
    rates = {t["name"]: (t["premature_rate_base"], t["premature_rate_candidate"]) for t in s["tasks"]}
    print("\npremature rates base -> ft-early-eot:", rates)
    assert s["verdict"] == "FAIL"
    assert "demo_sort" in _premature(s)
    sort_b, sort_c = rates["demo_sort"]
    assert sort_b == 0.0 and sort_c >= 0.2
    assert max(rates, key=lambda t: rates[t][1] - rates[t][0]) == "demo_sort", "the rise is largest on sort"
    reason = next(r for r in s["reasons"] if " demo_sort premature:" in r)
    assert "premature endings" in reason and "limit" in reason
    # add and rev (tasks the fine-tune replayed unchanged) keep ending their answers
    assert not _premature(s) & {"demo_add", "demo_rev"}
    items = pd.read_parquet(d / "items.parquet")
    sort = items[items["task"] == "demo_sort"]
    assert (sort[sort["premature_cand"]]["output_cand"].str.strip() == "").all(), "sort's are empty answers"
    md = (d / "report.md").read_text()
    assert "ends early" in md
    html = (d / "report.html").read_text()
    assert 'id="f-premature"' in html and '"dc":["premature"]' in html


@pytest.mark.parametrize("ft", ["ft-identical", "ft-answer-only"])
def test_no_premature_endings(demo, session_store, tmp_path_factory, ft):
    s, _ = _compare(tmp_path_factory, session_store, demo["base"], demo[ft], ft)
    print(f"\npremature rates base -> {ft}:",
          {t["name"]: (t["premature_rate_base"], t["premature_rate_candidate"]) for t in s["tasks"]})  # fmt: skip
    assert not _premature(s)
    for t in s["tasks"]:
        assert t["premature_rate_candidate"] <= t["premature_rate_base"] + 0.01, t["name"]
