"""Causes of negative flips (harness.causes) on a table of hand-made cases, and the
knowledge probe's requests (harness.knowledge): pure functions, no model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from harness import causes, knowledge
from harness.compare import add_flags
from harness.types import Loglik

TABLE = json.loads((Path(__file__).parent / "data" / "cause_cases.json").read_text())


def _frame(cases: list[dict]) -> pd.DataFrame:
    rows = [{**TABLE["default"], "item_id": str(i), "prompt": "q?", **c} for i, c in enumerate(cases)]
    df = pd.DataFrame(rows).drop(columns=["name", "cause"], errors="ignore")
    for col in ("gold_ll_base", "gold_ll_cand"):
        if col in df:
            df[col] = df[col].astype(float)
    df["correct_base"] = df["flip"] != "pos"
    df["correct_cand"] = df["flip"] == "pos"
    return add_flags(df)


@pytest.mark.parametrize("case", TABLE["cases"], ids=[c["name"] for c in TABLE["cases"]])
def test_cause_table(case):
    items = _frame([case])
    assert causes.classify(items).tolist() == [case["cause"]]


def test_classify_whole_table_at_once():
    """Vectorised over the table, row order kept, the same causes as one by one."""
    items = _frame(TABLE["cases"])
    assert causes.classify(items).tolist() == [c["cause"] for c in TABLE["cases"]]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Answer: 42.", ["answer", "42"]),
        ("1,234.50 and $7.0", ["1234.5", "and", "7"]),
        ("The answer is (B).", ["the", "answer", "is", "(b)"]),
        ("  TRUE\n", ["true"]),
        ("-3", ["3"]),
    ],
)
def test_words(text, expected):
    assert causes.words(text) == expected


def test_counts_and_summary_line():
    n = causes.counts(["knowledge lost", "empty", "empty", "runaway", "unparsed"])
    assert list(n) == ["empty", "runaway", "unparsed", "knowledge lost"], "in the order of CAUSES"
    assert (
        causes.summary_line("bbh_zeroshot", n)
        == "bbh_zeroshot: 5 lost: 2 empty, 1 runaway, 1 unparsed, 1 knowledge lost"
    )
    assert set(causes.REMEDY) == set(causes.CAUSES)


def test_margin_is_the_knowledge_line():
    row = {"gold_ll_base": -1.0, "gold_ll_cand": -1.0 - causes.KNOWLEDGE_MARGIN, "gold_top_cand": False}
    assert causes.knowledge_kept(row) is True
    assert causes.knowledge_kept({**row, "gold_ll_cand": row["gold_ll_cand"] - 0.01}) is False
    assert causes.knowledge_kept({**row, "gold_ll_cand": math.nan}) is None


@pytest.mark.parametrize(
    ("output", "answer", "target", "span"),
    [
        ("42", "42", "42", "42"),
        ("Step: 6*7. #### 42", "42", "42", "42"),
        ("The answer is (B).", "(B)", "(B)", "(B)"),
        ("so it is True", "[invalid]", "true", "True"),  # the filter failed: the target, any case
        ("  olleh\n", "  olleh\n", "olleh", "olleh"),
        ("no answer here", "[invalid]", "7", "no answer here"),  # neither: the whole output
    ],
)
def test_answer_span(output, answer, target, span):
    start, end = knowledge.answer_span(output, answer, target)
    assert output[start:end] == span


def _items():
    base = {"task": "t", "kind": "generate_until", "prompt": "P:", "target": "42", "output_base": "x=42",
            "answer_base": "42", "correct_base": True, "correct_cand": False, "flip": "neg"}  # fmt: skip
    return pd.DataFrame([
        {**base, "item_id": "0", "output_cand": "41", "answer_cand": "41"},
        {**base, "item_id": "1", "output_cand": "??", "answer_cand": "[invalid]"},
        {**base, "item_id": "2", "flip": "", "correct_cand": True, "output_cand": "42", "answer_cand": "42"},
        {**base, "item_id": "3", "kind": "multiple_choice", "prompt": "Q", "target": " 9", "output_base": " 9",
         "answer_base": " 9", "output_cand": " 8", "answer_cand": " 8"},
    ])  # fmt: skip


def test_probe_items_in_the_base_format():
    todo = knowledge.probe_items(_items())
    assert [p.row for p in todo] == [0, 1, 3], "negative flips only by default"
    first = todo[0]
    assert (first.gold.context, first.gold.continuation) == ("P:x=", "42"), "the base's prefix, then its answer"
    assert first.own is not None and first.own.continuation == "41", "the candidate's answer, same slot"
    assert todo[1].own is None, "an unparsed answer is not ranked"
    assert (todo[2].gold.context, todo[2].gold.continuation, todo[2].own) == ("Q", " 9", None)
    assert [p.row for p in knowledge.probe_items(_items(), probe_all=True)] == [0, 1, 2, 3]


def test_probe_columns():
    def scorer(table):
        return lambda reqs: [Loglik(table.get(r.continuation, -20.0), False, 1) for r in reqs]

    out = knowledge.probe(_items(), scorer({"42": -0.1, " 9": -0.2}), scorer({"42": -5.0, "41": -1.0, " 9": -0.3}))
    assert out["gold_ll_base"].tolist()[:2] == [-0.1, -0.1] and math.isnan(out["gold_ll_base"][2])
    assert out["gold_ll_cand"].tolist()[3] == -0.3
    assert out["gold_top_cand"].tolist() == [False, False, False, False]
    out = out.assign(finish_cand="eos", finish_base="eos", ntok_base=2, ntok_cand=2, loop_base=False, loop_cand=False)
    assert causes.classify(add_flags(out)).tolist() == [
        "knowledge lost",
        "unparsed",
        "",
        "knowledge kept, not produced",
    ]
