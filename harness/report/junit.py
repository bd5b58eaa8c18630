"""``junit.xml``: one test case per (task, rule); a fired FAIL rule is a <failure> with the
numbers, a fired WARN rule a <skipped> with its message (CI shows it, the build stays green)."""

from __future__ import annotations

import re
from xml.etree import ElementTree as ET

from harness.compare import Comparison

_BAD_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _x(s: object) -> str:
    return _BAD_XML.sub("\ufffd", str(s))


def render_junit(cmp: Comparison) -> str:
    results = cmp.verdict.results
    failures = sum(1 for r in results if r.fired and r.severity == "FAIL")
    skipped = sum(1 for r in results if r.fired and r.severity != "FAIL")
    suites = ET.Element("testsuites", name="regress", tests=str(len(results)), failures=str(failures))
    suite = ET.SubElement(
        suites,
        "testsuite",
        name=_x(f"regress.{cmp.suite}"),
        tests=str(len(results)),
        failures=str(failures),
        errors="0",
        skipped=str(skipped),
        time="0",
    )
    for r in results:
        case = ET.SubElement(suite, "testcase", classname=_x(f"regress.{cmp.suite}.{r.task}"), name=r.rule, time="0")
        detail = f"{r.message} (value {r.value}, threshold {r.threshold})"
        if r.fired and r.severity == "FAIL":
            ET.SubElement(case, "failure", message=_x(r.message), type=r.rule).text = _x(detail)
        elif r.fired:
            ET.SubElement(case, "skipped", message=_x(f"WARN: {r.message}"))
    ET.indent(suites)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"
