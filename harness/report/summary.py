"""``summary.json``: the machine-readable verdict of one comparison, written and read here.

``build_summary(cmp)`` returns a JSON-ready dict that validates against ``schema()`` (JSON
Schema 2020-12; ``harness/summary.schema.json`` is the file shipped as package data, generated
from the registries by ``harness.report.schema``); ``load_comparison(report_dir)`` reads a
report folder back into a ``Comparison`` (summary.json and items.parquet), as ``regress
gate`` re-judges it. Every record written has a symmetric ``to_dict``/``from_dict``.
``schema_version`` changes whenever a field is removed or changes meaning; new optional
fields keep it. Numbers that are not finite (an infinite length ratio) become null.
``policy`` is the effective gate policy in its YAML form, so ``regress gate REPORT_DIR``
re-judges under the same policy and the verdict can be reproduced. ``groups`` (only for a
suite with groups) holds one row per group over its subtasks' pooled items, naming its
``subtasks``; ``tasks`` stays one row per task. ``causes`` counts the lost items by cause
(``harness.causes``), derived from the items, so it is not read back.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from harness import __version__, causes
from harness.compare import tables
from harness.errors import RegressError
from harness.gate import parse_policy, policy_to_dict
from harness.registry import Policy
from harness.types import (
    Checkpoint,
    Comparison,
    DraftCounts,
    JsonObject,
    NoiseFloor,
    ProbeRow,
    RuleOutcome,
    RunSource,
    TaskRow,
    Verdict,
)

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


def schema() -> Mapping[str, Any]:
    """The JSON Schema of summary.json, as the registered detectors and rules make it now."""
    from harness.report.schema import build_schema

    return build_schema()


def build_summary(cmp: Comparison) -> JsonObject:
    out: JsonObject = _clean(
        {
            "schema_version": SCHEMA_VERSION,
            "regress_version": __version__,
            "verdict": cmp.verdict.level,
            "reasons": list(cmp.verdict.reasons),
            "warnings": list(cmp.warnings),
            "base": cmp.base.to_dict(),
            "candidate": cmp.candidate.to_dict(),
            "suite": {"name": cmp.suite, "hash": cmp.suite_hash},
            "backend": cmp.backend,
            "tasks": [t.to_dict() for t in cmp.tasks],
            **({"groups": [g.to_dict() for g in cmp.groups]} if cmp.groups else {}),
            "overall": cmp.overall.to_dict(),
            "rules": [r.to_dict() for r in cmp.verdict.results],
            "policy": policy_to_dict(cmp.policy),
            **({"probes": {"termination": cmp.termination.to_dict()}} if cmp.termination else {}),
            "config_check": list(cmp.config_check),
            **({"noise_floor": cmp.noise_floor.to_dict()} if cmp.noise_floor else {}),
            **({"drafting": asdict(cmp.drafting)} if cmp.drafting else {}),
            **({"detector": dict(cmp.detector)} if cmp.detector is not None else {}),
            **({"sources": {k: v.to_dict() for k, v in cmp.sources.items()}} if cmp.sources else {}),
            "causes": causes_summary(cmp),
        }
    )
    return out


def causes_summary(cmp: Comparison) -> JsonObject:
    """Lost items (negative flips) by cause, per task, per group and overall, with each
    found cause's remedy and the knowledge probe's margin and reach (``harness.causes``)."""
    items = cmp.items if "cause" in cmp.items else causes.add_causes(cmp.items)
    overall = causes.counts(items.loc[items["cause"] != "", "cause"])
    probed = int(items["gold_ll_cand"].notna().sum()) if "gold_ll_cand" in items else 0
    out: JsonObject = {
        "overall": overall,
        "tasks": causes.unit_counts(items, [t.name for t in cmp.tasks]),
        "remedies": {c: causes.REMEDY[c] for c in overall},
        "knowledge_margin": causes.KNOWLEDGE_MARGIN,
        "probed_items": probed,
    }
    if cmp.groups:
        out["groups"] = causes.unit_counts(items, [g.name for g in cmp.groups])
    return out


@dataclass(frozen=True)
class StoredReport:
    """A report folder read back: its comparison, and whether its summary recorded the policy
    (a report written before summaries did has the default policy in ``comparison``)."""

    comparison: Comparison
    policy_stored: bool


def _verdict(d: Mapping[str, Any]) -> Verdict:
    results = tuple(RuleOutcome.from_dict(r) for r in d["rules"])
    return Verdict(str(d["verdict"]), tuple(d.get("reasons") or ()), results)


def _comparison(d: Mapping[str, Any], items: pd.DataFrame, policy: Policy) -> Comparison:
    stored_probe = (d.get("probes") or {}).get("termination")
    overall = d.get("overall")
    return Comparison(
        base=Checkpoint.from_dict(d["base"]),
        candidate=Checkpoint.from_dict(d["candidate"]),
        suite=str(d["suite"]["name"]),
        suite_hash=str(d["suite"]["hash"]),
        backend=str(d.get("backend", "?")),
        items=items,
        tasks=tuple(TaskRow.from_dict(t) for t in d["tasks"]),
        overall=TaskRow.from_dict(overall) if overall else tables(items)[2],  # null: measured again
        verdict=_verdict(d),
        policy=policy,
        warnings=tuple(d.get("warnings") or ()),
        config_check=tuple(d.get("config_check") or ()),
        termination=ProbeRow.from_dict(stored_probe) if stored_probe else None,
        noise_floor=NoiseFloor.from_dict(d["noise_floor"]) if d.get("noise_floor") else None,
        detector=d.get("detector"),
        groups=tuple(TaskRow.from_dict(g) for g in d.get("groups") or ()),
        sources={k: RunSource.from_dict(v) for k, v in (d.get("sources") or {}).items()},
        drafting=DraftCounts(**d["drafting"]) if d.get("drafting") else None,
    )


def load_comparison(report_dir: str | Path) -> StoredReport:
    """A report folder (summary.json, items.parquet) read back as it was written; a folder
    that is not a regress report is a one-line ``RegressError``."""
    folder = Path(report_dir)
    try:
        d: Mapping[str, Any] = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
        items = pd.read_parquet(folder / "items.parquet")
        stored = "policy" in d
        policy = parse_policy(d["policy"], where=f"policy in {folder / 'summary.json'}") if stored else Policy()
        return StoredReport(_comparison(d, items, policy), stored)
    except (OSError, ValueError, KeyError, TypeError, IndexError) as e:
        raise RegressError(f"{report_dir} is not a regress report folder ({type(e).__name__}: {e})") from e
