"""``summary.json``: the machine-readable verdict of one comparison.

``build_summary(cmp)`` returns a JSON-ready dict that validates against
``harness/summary.schema.json`` (JSON Schema 2020-12, shipped as package data; the tests
validate against it). ``schema_version`` changes whenever a field is removed or changes
meaning; new optional fields keep it. Numbers that are not finite (an infinite length
ratio) become null. ``policy`` is the effective gate policy in its YAML form, so
``regress gate REPORT_DIR`` re-judges under the same policy and the verdict can be
reproduced. ``groups`` (only for a suite with groups) holds one row per group over its
subtasks' pooled items, naming its ``subtasks``; ``tasks`` stays one row per task.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict
from functools import cache
from importlib import resources
from typing import Any

from harness import __version__
from harness.gate import policy_to_dict
from harness.types import Comparison

SCHEMA_VERSION = 1


def _clean(x: Any) -> Any:
    """JSON-safe values: NaN/inf become None, numpy scalars become Python numbers."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_clean(v) for v in x]
    if hasattr(x, "item") and not isinstance(x, str | bytes):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


@cache
def schema() -> Mapping[str, Any]:
    """The JSON Schema of summary.json."""
    return json.loads(resources.files("harness").joinpath("summary.schema.json").read_text(encoding="utf-8"))


def build_summary(cmp: Comparison) -> dict[str, Any]:
    return _clean(
        {
            "schema_version": SCHEMA_VERSION,
            "regress_version": __version__,
            "verdict": cmp.verdict.level,
            "reasons": list(cmp.verdict.reasons),
            "warnings": list(cmp.warnings),
            "base": asdict(cmp.base),
            "candidate": asdict(cmp.candidate),
            "suite": {"name": cmp.suite, "hash": cmp.suite_hash},
            "backend": cmp.backend,
            "tasks": [t.to_dict() for t in cmp.tasks],
            **({"groups": [g.to_dict() for g in cmp.groups]} if cmp.groups else {}),
            "overall": cmp.overall.to_dict(),
            "rules": [asdict(r) for r in cmp.verdict.results],
            "policy": policy_to_dict(cmp.policy),
            **({"probes": {"termination": cmp.termination.to_dict()}} if cmp.termination else {}),
            "config_check": list(cmp.config_check),
            **({"noise_floor": asdict(cmp.noise_floor)} if cmp.noise_floor else {}),
            **({"detector": dict(cmp.detector)} if cmp.detector is not None else {}),
            **({"sources": {k: v.to_dict() for k, v in cmp.sources.items()}} if cmp.sources else {}),
        }
    )
