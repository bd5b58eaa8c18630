"""``summary.schema.json``, generated: the hand-written schema with the parts the registries own.

    .venv/bin/python -m harness.report.schema      # rewrite harness/summary.schema.json

``build_schema()`` reads the shipped file and sets, from ``harness.registry`` and the records
of ``harness.types``: each registered detector's rates in ``$defs.task`` (and the task's
required fields: ``TaskRow``'s fields without a default, and the rates), the rule names of
``$defs.rule``, every policy threshold (``$defs.thresholds``, from each threshold's ``Spec``),
the policy's required keys and each rule's severity. ``summary.schema()`` validates with it,
so a detector or rule registered at run time (a plugin, a test) is in the schema at once;
tests/test_schema_registry.py checks that the shipped file equals the generated one for the
built-in registrations, and that the schema and the dataclasses agree field by field.
"""

from __future__ import annotations

import dataclasses
import json
from importlib import resources
from pathlib import Path

from harness import gate, registry
from harness.types import JsonObject, TaskRow

SCHEMA_FILE = "summary.schema.json"
_RATE = {"$ref": "#/$defs/rate"}
_COUNT = {"$ref": "#/$defs/count"}


def _threshold_schema(t: registry.Threshold) -> JsonObject:
    """A threshold's JSON Schema: a boolean, or a number within its ``Spec``'s bounds (null
    allowed for an optional one)."""
    if t.boolean:
        return {"type": "boolean"}
    s = t.spec
    if (s.at_least, s.above, s.at_most) == (0, None, 1):
        out: JsonObject = dict(_RATE)
    else:
        out = {"type": "number"}
        for key, bound in (("minimum", s.at_least), ("exclusiveMinimum", s.above), ("maximum", s.at_most)):
            if bound is not None:
                out[key] = bound
    return {"oneOf": [out, {"type": "null"}]} if t.optional else out


def _at(obj: JsonObject, *path: str) -> JsonObject:
    """The JSON object at ``path`` inside ``obj`` (the schema template's nesting, checked)."""
    for key in path:
        inner = obj[key]
        if not isinstance(inner, dict):
            raise TypeError(f"{SCHEMA_FILE}: {'.'.join(path)} is not an object")
        obj = inner
    return obj


def _detector_rates(task: JsonObject) -> list[str]:
    """Set each registered detector's rate properties; return their names."""
    names = []
    for d in registry.detectors():
        props = {
            f"{d.name}_rate_base": {**_RATE, "description": f"the base's outputs flagged: {d.label}"},
            f"{d.name}_rate_candidate": {**_RATE, "description": d.description},
            f"{d.name}_n": {**_COUNT, "description": "items of its kinds, where not the generated ones"},
        }
        _at(task, "properties").update(props)
        names += list(props)[:2]
    return names


def build_schema(template: JsonObject | None = None) -> JsonObject:
    """The summary.json schema for the registrations as they are now."""
    out = template if template is not None else json.loads(_shipped().read_text(encoding="utf-8"))
    defs = _at(out, "$defs")
    rates = _detector_rates(_at(defs, "task"))
    no_default = dataclasses.MISSING
    fixed = [f.name for f in dataclasses.fields(TaskRow) if f.default is no_default and f.default_factory is no_default]
    _at(defs, "task")["required"] = fixed + rates
    _at(defs, "rule", "properties")["rule"] = {"enum": [r.name for r in registry.rules()]}
    th = registry.thresholds()
    _at(defs, "thresholds")["properties"] = {name: _threshold_schema(t) for name, t in th.items()}
    _at(defs, "policy")["required"] = [*th, "tasks", "severity"]
    _at(defs, "policy", "properties", "severity")["properties"] = {
        r.name: {"enum": ["FAIL", "WARN"]} if r.never_off else {"$ref": "#/$defs/severity"} for r in registry.rules()
    }
    return out


def _shipped() -> Path:
    return Path(str(resources.files("harness").joinpath(SCHEMA_FILE)))


def write_schema() -> Path:
    """Rewrite the shipped file from the built-in registrations."""
    assert gate.DEFAULT_SEVERITY  # the gate's module registers the built-in rules
    path = _shipped()
    path.write_text(json.dumps(build_schema(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


if __name__ == "__main__":
    print(f"wrote {write_schema()}")
