"""``junit.xml``: one test case per (task, rule) the gate evaluated, for CI systems.

    xml = render_junit(cmp)

One ``<testsuite>`` per comparison (``regress.SUITE``); each test case is named after the
rule, its classname is ``regress.SUITE.TASK``. A fired FAIL rule is a ``<failure>`` whose
message and text carry the numbers (value, limit, p-value); a fired WARN rule is a
``<skipped>`` with its message, so CI shows it while the build stays green (``--strict``
fails the build through the exit code). Every case's ``<system-out>`` holds the rule's
numbers, fired or not. It validates against the JUnit XML schema of Jenkins' xUnit plugin
(tests/data/junit-10.xsd), which GitLab reads too. Characters XML cannot hold become U+FFFD.
"""

from __future__ import annotations

import re
from xml.etree import ElementTree as ET

from harness.types import Comparison, RuleOutcome

_BAD_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _x(s: object) -> str:
    return _BAD_XML.sub("\ufffd", str(s))


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.6g}"


def _detail(r: RuleOutcome) -> str:
    p = "" if r.p_value is None else f", p-value {_num(r.p_value)}"
    return f"{r.task} {r.rule}: value {_num(r.value)}, limit {_num(r.threshold)}{p}; {r.message}"


def render_junit(cmp: Comparison) -> str:
    results = cmp.verdict.results
    failures = sum(1 for r in results if r.fired and r.severity == "FAIL")
    skipped = sum(1 for r in results if r.fired and r.severity != "FAIL")
    counts = {"tests": str(len(results)), "failures": str(failures), "errors": "0", "time": "0"}
    suites = ET.Element("testsuites", {"name": "regress", **counts})
    suite_name = _x(f"regress.{cmp.suite}")
    suite = ET.SubElement(suites, "testsuite", {"name": suite_name, "skipped": str(skipped), **counts})
    props = ET.SubElement(suite, "properties")
    for key, value in (
        ("verdict", cmp.verdict.level),
        ("base", cmp.base.path),
        ("base_fingerprint", cmp.base.fingerprint),
        ("candidate", cmp.candidate.path),
        ("candidate_fingerprint", cmp.candidate.fingerprint),
        ("backend", cmp.backend),
    ):
        ET.SubElement(props, "property", name=key, value=_x(value))
    for r in results:
        case = ET.SubElement(suite, "testcase", classname=f"{suite_name}.{_x(r.task)}", name=_x(r.rule), time="0")
        detail = _x(_detail(r))
        if r.fired and r.severity == "FAIL":
            ET.SubElement(case, "failure", message=detail, type=_x(r.rule)).text = detail
        elif r.fired:
            ET.SubElement(case, "skipped", message=_x(f"WARN: {_detail(r)}"))
        ET.SubElement(case, "system-out").text = detail
    ET.indent(suites)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"
