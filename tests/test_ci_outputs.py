"""The outputs CI systems and reviewers read: junit.xml against the JUnit XML schema that
Jenkins validates with (tests/data/junit-10.xsd, vendored from the Jenkins xUnit plugin),
summary.json against harness/summary.schema.json, and report.md (bounded for any suite
size, untrusted text inert, rendered with a CommonMark + GFM-tables parser)."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from importlib import resources
from pathlib import Path

import jsonschema
import pytest
from lxml import etree

from harness import gate
from harness.report import write_report
from harness.report.junit import render_junit
from harness.report.markdown import MAX_FLIPS, render_markdown
from harness.report.summary import build_summary, schema
from harness.types import Checkpoint
from tests._report_fakes import HOSTILE_OUTPUTS, fake_comparison
from tests.test_gate import make_comparison, probe_row

XSD = Path(__file__).parent / "data" / "junit-10.xsd"
FAILING = {"demo_add": {"cells": (300, 60, 10, 130), "nonterm": (0, 20)}, "demo_rev": {"cells": (400, 0, 0, 100)},
           "tiny": {"cells": (20, 1, 0, 4)}}  # fmt: skip
PASSING = {"demo_add": {"cells": (400, 5, 5, 90)}, "demo_rev": {"cells": (350, 0, 0, 150)}}


@pytest.fixture(scope="module")
def junit_schema() -> etree.XMLSchema:
    return etree.XMLSchema(etree.parse(str(XSD)))


@pytest.fixture(scope="module")
def hostile():  # type: ignore[no-untyped-def]
    return fake_comparison(400, hostile=True)


def _comparisons(hostile):  # type: ignore[no-untyped-def]
    weird = make_comparison(FAILING)
    weird = replace(weird, suite="su<i>te&\x00\x1b", candidate=Checkpoint("ckpt/\x07cand <&> \ud800", "fp"))
    return {"failing": make_comparison(FAILING), "passing": make_comparison(PASSING), "hostile": hostile,
            "weird names": weird}  # fmt: skip


# -- junit.xml ------------------------------------------------------------------------


def test_junit_validates_against_the_jenkins_schema(junit_schema: etree.XMLSchema, hostile) -> None:  # type: ignore[no-untyped-def]
    for label, cmp in _comparisons(hostile).items():
        doc = etree.fromstring(render_junit(cmp).encode("utf-8"))
        assert junit_schema.validate(doc), (label, junit_schema.error_log)


def test_junit_one_case_per_task_and_rule_failures_carry_numbers() -> None:
    cmp = make_comparison(FAILING)
    doc = etree.fromstring(render_junit(cmp).encode("utf-8"))
    cases = doc.findall(".//testcase")
    assert len(cases) == len(cmp.verdict.results)
    keys = {(c.get("classname"), c.get("name")) for c in cases}
    assert keys == {(f"regress.synthetic.{r.task}", r.rule) for r in cmp.verdict.results}
    suite = doc.find("testsuite")
    failures = [c for c in cases if c.find("failure") is not None]
    skipped = [c for c in cases if c.find("skipped") is not None]
    assert suite.get("failures") == str(len(failures)) == doc.get("failures")
    assert suite.get("skipped") == str(len(skipped)) and suite.get("tests") == str(len(cases))
    assert {(c.get("classname").rsplit(".", 1)[1], c.get("name")) for c in failures} == {
        ("demo_add", "acc_drop"), ("demo_add", "negative_flips"), ("demo_add", "nonterm"), ("demo_add", "loops")
    }  # fmt: skip
    assert [c.get("classname").rsplit(".", 1)[1] + "/" + c.get("name") for c in skipped] == ["tiny/inconclusive"]
    acc = next(c for c in failures if c.get("name") == "acc_drop").find("failure")
    assert acc.get("type") == "acc_drop"
    for text in (acc.get("message"), acc.text):
        assert "value 0.1," in text and "limit 0.01" in text and "p-value" in text and "0.720 -> 0.620" in text
    assert all(c.find("system-out") is not None for c in cases)  # passing rules keep their numbers too
    props = {p.get("name"): p.get("value") for p in doc.iter("property")}
    assert props["verdict"] == "FAIL" and props["candidate_fingerprint"] == "fp-cand"


# -- summary.json ---------------------------------------------------------------------


def test_schema_ships_with_the_package() -> None:
    text = resources.files("harness").joinpath("summary.schema.json").read_text(encoding="utf-8")
    assert json.loads(text) == schema()
    jsonschema.Draft202012Validator.check_schema(schema())


def test_summary_validates(tmp_path: Path, hostile) -> None:  # type: ignore[no-untyped-def]
    validator = jsonschema.Draft202012Validator(schema())
    for label, cmp in _comparisons(hostile).items():
        summary = build_summary(cmp)
        errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(summary)]
        assert not errors, (label, errors[:5])
    # the file as written (JSON round trip, NaN/inf as null) validates too
    out = write_report(make_comparison(FAILING), tmp_path / "r")
    written = json.loads((out / "summary.json").read_text())
    validator.validate(written)
    assert written["verdict"] == "FAIL" and len(written["reasons"]) == 5
    assert gate.parse_policy(written["policy"]) == gate.Policy()


def test_summary_with_probe_extras_validates() -> None:
    cmp = make_comparison(PASSING)
    term = probe_row(50, 0.5, 0.4)
    verdict = gate.judge(cmp.tasks, gate.Policy(), [term])
    cmp = replace(cmp, verdict=verdict, termination=term, config_check=())
    summary = build_summary(cmp)
    jsonschema.validate(summary, schema(), cls=jsonschema.Draft202012Validator)
    assert summary["verdict"] == "FAIL" and summary["probes"]["termination"]["n"] == 50


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("verdict",), "MAYBE"),
        (("surprise",), 1),
        (("rules", 0, "rule"), "vibes"),
        (("rules", 0, "severity"), "off"),
        (("tasks", 0, "acc_base"), 1.5),
        (("tasks", 0, "negative_flips"), -1),
        (("policy", "max_acc_drpo"), 0.1),
        (("policy", "severity", "inconclusive"), "off"),
        (("schema_version",), 2),
    ],
)
def test_schema_rejects_malformed_summaries(path: tuple, value: object) -> None:
    summary = json.loads(json.dumps(build_summary(make_comparison(FAILING))))
    node = summary
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(summary, schema(), cls=jsonschema.Draft202012Validator)


# -- report.md ------------------------------------------------------------------------


def _check_markdown(text: str) -> str:
    """Bounded, table-consistent, and renders with nothing live in it; returns the HTML."""
    assert len(text.splitlines()) <= 60, len(text.splitlines())
    assert len(text.encode("utf-8")) <= 64 * 1024
    assert not re.search("[\x00-\x08\x0b-\x1f\x7f\u202a-\u202e\u2066-\u2069]", text)
    for block in re.split(r"\n(?!\|)", text):
        rows = [ln for ln in block.splitlines() if ln.startswith("|")]
        widths = {len(re.split(r"(?<!\\)\|", ln)) for ln in rows}
        assert len(widths) <= 1, rows
    md = pytest.importorskip("markdown_it").MarkdownIt("commonmark").enable("table")
    html = md.render(text)
    outside_code = re.sub(r"<code>.*?</code>", "", html, flags=re.S)
    for live in ("<script", "<img", "<svg", "<a ", "<b>", "<i>", "<p>&lt;", "onerror"):
        assert live not in outside_code, live
    return html


def test_markdown_has_verdict_table_and_top_flips() -> None:
    text = render_markdown(make_comparison(FAILING))
    html = _check_markdown(text)
    assert text.startswith("## regress: ❌ FAIL")
    assert "**Rules that fired** (5)" in text and "`acc_drop`" in text and "limit" in text
    assert "| ❌ `demo_add` | 500 | 72.0% | 62.0% | -10.0 [" in text
    assert "| ⚠️ `tiny` |" in text and "| ✅ `demo_rev` |" in text and "**overall**" in text
    assert "**Top negative flips** (61 right→wrong in all" in text
    assert html.count("<tr>") == 1 + 4 + 1 + MAX_FLIPS  # header + 3 tasks + overall, header + flips


def test_markdown_escapes_hostile_outputs(hostile) -> None:  # type: ignore[no-untyped-def]
    text = render_markdown(hostile)
    html = _check_markdown(text)
    assert "window.__pwned" in html  # shown, as code
    assert "<code>41 &lt;script&gt;window.__pwned=1&lt;/script&gt; done</code>" in html
    assert len(max(text.splitlines(), key=len)) < 1000  # the megabyte output was cut
    assert HOSTILE_OUTPUTS[4][:100] not in text


def test_markdown_stays_short_for_huge_suites() -> None:
    spec = {f"task_{i:03d}": {"cells": (40, 12 if i % 2 else 1, 1, 7)} for i in range(150)}
    cmp = make_comparison(spec)
    items = cmp.items.copy()
    neg = items["flip"] == "neg"
    items.loc[neg, "output_cand"] = "| `x` | <img src=x onerror=alert(1)> @everyone ![t](http://e/x.png) \n" * 300
    items.loc[neg, "item_id"] = "`id`|" * 100
    cmp = replace(cmp, items=items, warnings=tuple(f"warning {i} " + "w" * 5000 for i in range(50)))
    assert len(cmp.verdict.reasons) > 100
    text = render_markdown(cmp)
    _check_markdown(text)
    assert "… and " in text and "more tasks" in text
    assert "@everyone" not in re.sub(r"`[^`]*`", "", text)
    print(f"\nreport.md for 150 tasks, {len(cmp.verdict.reasons)} fired rules: "
          f"{len(text.splitlines())} lines, {len(text.encode())} bytes")  # fmt: skip
