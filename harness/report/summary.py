"""``summary.json``: the machine-readable verdict of one comparison (schema v1)."""

from __future__ import annotations

import math
from typing import Any

from harness import __version__
from harness.compare import Comparison

SCHEMA_VERSION = 1


def _clean(x: Any) -> Any:
    """JSON-safe values: NaN/inf become None, numpy scalars become Python numbers."""
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_clean(v) for v in x]
    if hasattr(x, "item") and not isinstance(x, str | bytes):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def build_summary(cmp: Comparison) -> dict[str, Any]:
    tasks = [t for t in cmp.tasks if t["name"] != "overall"]
    overall = next((t for t in cmp.tasks if t["name"] == "overall"), None)
    return _clean(
        {
            "schema_version": SCHEMA_VERSION,
            "regress_version": __version__,
            "verdict": cmp.verdict.level,
            "reasons": list(cmp.verdict.reasons),
            "warnings": list(cmp.warnings),
            "base": {"path": cmp.base.path, "fingerprint": cmp.base.fingerprint},
            "candidate": {"path": cmp.candidate.path, "fingerprint": cmp.candidate.fingerprint},
            "suite": {"name": cmp.suite, "hash": cmp.suite_hash},
            "backend": cmp.backend,
            "tasks": tasks,
            "overall": overall,
            "rules": [r.__dict__ for r in cmp.verdict.results],
            **{k: v for k, v in cmp.extras.items() if k in ("probes", "config_check", "noise_floor", "detector")},
        }
    )
