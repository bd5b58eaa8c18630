"""summary.json's one owner: the shipped schema is the one the registries generate, the schema
and the records agree field by field, and every record written reads back as it was
(``to_dict``/``from_dict``; ``load_comparison`` of a written report)."""

from __future__ import annotations

import dataclasses
import json
from importlib import resources
from pathlib import Path

import jsonschema

from harness import registry
from harness.report import write_report
from harness.report.schema import build_schema
from harness.report.summary import build_summary, load_comparison, schema
from harness.types import Checkpoint, NoiseFloor, ProbeRow, RuleOutcome, TaskRow
from tests.test_gate import make_comparison, probe_row

FAILING = {"demo_add": {"cells": (300, 60, 10, 130), "nonterm": (0, 20)}, "demo_rev": {"cells": (400, 0, 0, 100)}}


def _names(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def test_shipped_schema_is_the_generated_one() -> None:
    shipped = json.loads(resources.files("harness").joinpath("summary.schema.json").read_text(encoding="utf-8"))
    assert shipped == build_schema(), "run: .venv/bin/python -m harness.report.schema"


def test_schema_and_records_agree_field_by_field() -> None:
    defs = schema()["$defs"]
    rates = {f"{d.name}_{k}" for d in registry.detectors() for k in ("rate_base", "rate_candidate", "n")}
    assert set(defs["task"]["properties"]) == (_names(TaskRow) - {"rates"}) | rates
    assert set(defs["rule"]["properties"]) == _names(RuleOutcome)
    assert set(defs["checkpoint"]["properties"]) == _names(Checkpoint)
    assert set(schema()["properties"]["noise_floor"]["properties"]) == _names(NoiseFloor)
    assert list(defs["thresholds"]["properties"]) == list(registry.thresholds())
    assert defs["rule"]["properties"]["rule"]["enum"] == [r.name for r in registry.rules()]


def test_records_round_trip() -> None:
    cmp = make_comparison(FAILING)
    for row in (*cmp.tasks, cmp.overall):
        assert TaskRow.from_dict(json.loads(json.dumps(row.to_dict()))) == row
    for r in cmp.verdict.results:
        assert RuleOutcome.from_dict(json.loads(json.dumps(r.to_dict()))) == r
    nf = NoiseFloor(3, 100, 0.03, (8, 3), False)
    assert NoiseFloor.from_dict(json.loads(json.dumps(nf.to_dict()))) == nf
    probe = probe_row(200, 0.1, 0.05)
    assert ProbeRow.from_dict(json.loads(json.dumps(probe.to_dict()))) == probe


def test_a_written_report_reads_back(tmp_path: Path) -> None:
    cmp = dataclasses.replace(make_comparison(FAILING), noise_floor=NoiseFloor(0, 10, 0.0, None, True))
    cmp = dataclasses.replace(cmp, termination=probe_row(50, 0.2, 0.1))
    write_report(cmp, tmp_path / "r")
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    jsonschema.validate(summary, schema())
    stored = load_comparison(tmp_path / "r")
    back = stored.comparison
    assert stored.policy_stored
    assert (back.tasks, back.overall, back.verdict, back.policy) == (cmp.tasks, cmp.overall, cmp.verdict, cmp.policy)
    assert (back.base, back.candidate, back.termination, back.noise_floor) == (
        cmp.base,
        cmp.candidate,
        cmp.termination,
        cmp.noise_floor,
    )
    assert list(back.items.columns) == list(cmp.items.columns)
    assert build_summary(back) == summary
