"""Gate: turn a comparison into PASS / WARN / FAIL with every rule's numbers.

A policy is a set of thresholds (defaults in ``DEFAULTS``), overridable by the suite's
``policy:`` block and by ``--policy FILE`` (YAML), globally or per task::

    max_acc_drop: 0.01            # FAIL: a significant accuracy drop larger than this
    tasks:
      demo_sub: {max_acc_drop: 0.05}
    severity: {identity: FAIL}    # which rules FAIL and which WARN

Unknown keys and wrong types are rejected naming the key. ``judge(tasks, policy)``
evaluates every rule on every task row from ``compare.task_table`` and returns the
``Verdict``: its level, the reasons (the rules that fired, with numbers) and one
``RuleResult`` per (task, rule) for junit. Exit codes: PASS 0, WARN 0 (1 with --strict),
FAIL 1.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from harness.errors import PolicyError

LEVELS = ("PASS", "WARN", "FAIL")


@dataclass(frozen=True)
class Thresholds:
    max_acc_drop: float = 0.01
    max_negative_flip_rate: float = 0.02
    max_nonterm_rise: float = 0.01
    max_loop_rise: float = 0.01
    min_stop_drift: float = -1.0
    min_identity_rate: float | None = None
    max_detectable_drop: float = 0.05
    alpha: float = 0.05
    noise_floor: float = 0.0


DEFAULT_SEVERITY = {
    "acc_drop": "FAIL",
    "negative_flips": "FAIL",
    "nonterm": "FAIL",
    "loops": "FAIL",
    "stop_drift": "WARN",
    "identity": "WARN",
    "inconclusive": "WARN",
}


@dataclass(frozen=True)
class Policy:
    defaults: Thresholds = field(default_factory=Thresholds)
    tasks: dict[str, Thresholds] = field(default_factory=dict)
    severity: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_SEVERITY))

    def for_task(self, name: str) -> Thresholds:
        return self.tasks.get(name, self.defaults)


@dataclass(frozen=True)
class RuleResult:
    rule: str
    task: str
    severity: str
    fired: bool
    value: float | None
    threshold: float | None
    message: str


@dataclass(frozen=True)
class Verdict:
    level: str
    reasons: tuple[str, ...]
    results: tuple[RuleResult, ...]

    def exit_code(self, strict: bool = False) -> int:
        if self.level == "FAIL" or (strict and self.level == "WARN"):
            return 1
        return 0


# -- policy parsing -------------------------------------------------------------------

_FIELD_TYPES = {f.name: f.type for f in fields(Thresholds)}


def _thresholds(raw: Any, base: Thresholds, where: str) -> Thresholds:
    if not isinstance(raw, dict):
        raise PolicyError(f"{where}: expected a mapping of thresholds, got {type(raw).__name__}")
    vals: dict[str, Any] = {}
    for k, v in raw.items():
        if k not in _FIELD_TYPES:
            raise PolicyError(f"{where}: unknown policy key {k!r}")
        optional = "None" in str(_FIELD_TYPES[k])
        if v is None and optional:
            vals[k] = None
            continue
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise PolicyError(f"{where}: policy key {k!r} must be a number, got {v!r}")
        vals[k] = float(v)
    return replace(base, **vals)


def parse_policy(raw: Any, base: Policy | None = None, where: str = "policy") -> Policy:
    """Build a Policy from a mapping layered on ``base`` (defaults when None)."""
    base = base or Policy()
    if raw is None:
        return base
    if not isinstance(raw, dict):
        raise PolicyError(f"{where}: a policy must be a mapping, got {type(raw).__name__}")
    raw = dict(raw)
    task_raw = raw.pop("tasks", None) or {}
    sev_raw = raw.pop("severity", None) or {}
    defaults = _thresholds(raw, base.defaults, where)
    if not isinstance(task_raw, dict):
        raise PolicyError(f"{where}: policy key 'tasks' must map task names to thresholds")
    tasks = {k: replace(v) for k, v in base.tasks.items()}
    for name, t in task_raw.items():
        tasks[str(name)] = _thresholds(t, tasks.get(str(name), defaults), f"{where}: tasks.{name}")
    if not isinstance(sev_raw, dict):
        raise PolicyError(f"{where}: policy key 'severity' must map rule names to FAIL or WARN")
    severity = dict(base.severity)
    for rule, level in sev_raw.items():
        if rule not in DEFAULT_SEVERITY:
            raise PolicyError(f"{where}: unknown rule {rule!r} in 'severity' (rules: {', '.join(DEFAULT_SEVERITY)})")
        if level not in ("FAIL", "WARN", "off"):
            raise PolicyError(f"{where}: severity of {rule!r} must be FAIL, WARN or off, got {level!r}")
        severity[rule] = level
    return Policy(defaults, tasks, severity)


def load_policy_file(path: str | Path, base: Policy | None = None) -> Policy:
    from harness.errors import SuiteError
    from harness.suites import read_yaml

    p = Path(path)
    if not p.is_file():
        raise PolicyError(f"policy file not found: {path}")
    try:
        raw = read_yaml(p)
    except SuiteError as e:
        raise PolicyError(str(e)) from e
    return parse_policy(raw, base, where=str(p))


# -- rules ----------------------------------------------------------------------------


def _pts(x: float) -> str:
    return f"{100 * x:+.1f} pts"


Rule = Callable[[dict[str, Any], Thresholds], tuple[bool, float | None, float | None, str] | None]


def _acc_drop(t: dict[str, Any], th: Thresholds) -> tuple[bool, float, float, str]:
    drop = -t["delta"]
    sig = t.get("mcnemar_p_holm", t["mcnemar_p"]) < th.alpha
    excess = t["negative_flips"] - t["positive_flips"]
    beyond_noise = excess > th.noise_floor * t["n"]
    fired = drop > th.max_acc_drop and sig and beyond_noise
    msg = (
        f"accuracy {t['acc_base']:.3f} -> {t['acc_candidate']:.3f} ({_pts(t['delta'])}, "
        f"95% CI [{_pts(t['delta_lo'])}, {_pts(t['delta_hi'])}], McNemar p={t.get('mcnemar_p_holm', t['mcnemar_p']):.2g})"
    )
    return fired, drop, th.max_acc_drop, msg


def _negative_flips(t: dict[str, Any], th: Thresholds) -> tuple[bool, float, float, str]:
    nfr = t["nfr"] - th.noise_floor
    return (
        nfr > th.max_negative_flip_rate,
        t["nfr"],
        th.max_negative_flip_rate,
        f"{t['negative_flips']} of {t['n']} items flipped right->wrong (NFR {100 * t['nfr']:.1f}%)",
    )


def _rise(key: str, label: str) -> Rule:
    def rule(t: dict[str, Any], th: Thresholds) -> tuple[bool, float, float, str] | None:
        if not t.get("n_generated"):
            return None
        b, c = t[f"{key}_rate_base"], t[f"{key}_rate_candidate"]
        limit = th.max_nonterm_rise if key == "nonterm" else th.max_loop_rise
        return c - b > limit, c - b, limit, f"{label} {100 * b:.1f}% -> {100 * c:.1f}%"

    return rule


def _stop_drift(t: dict[str, Any], th: Thresholds) -> tuple[bool, float, float, str] | None:
    d = t.get("stop_drift_mean")
    if d is None or (isinstance(d, float) and math.isnan(d)):
        return None
    return d < th.min_stop_drift, d, th.min_stop_drift, f"mean stop-token drift {d:+.2f} nats"


def _identity(t: dict[str, Any], th: Thresholds) -> tuple[bool, float, float, str] | None:
    if th.min_identity_rate is None:
        return None
    r = t["identity_rate"]
    return r < th.min_identity_rate, r, th.min_identity_rate, f"{100 * r:.1f}% of outputs byte-identical"


def _inconclusive(t: dict[str, Any], th: Thresholds) -> tuple[bool, float, float, str]:
    return (
        t["mdd"] > th.max_detectable_drop,
        t["mdd"],
        th.max_detectable_drop,
        f"with {t['n']} items the smallest drop detectable at 80% power is {100 * t['mdd']:.1f} pts (inconclusive)",
    )


RULES: dict[str, Rule] = {
    "acc_drop": _acc_drop,
    "negative_flips": _negative_flips,
    "nonterm": _rise("nonterm", "non-termination"),
    "loops": _rise("loop", "tail repetition"),
    "stop_drift": _stop_drift,
    "identity": _identity,
    "inconclusive": _inconclusive,
}


def judge(tasks: list[dict[str, Any]], policy: Policy) -> Verdict:
    """Apply every rule to every task row (the ``overall`` row is reported, not gated)."""
    results: list[RuleResult] = []
    for t in tasks:
        if t["name"] == "overall":
            continue
        th = policy.for_task(t["name"])
        for rule, fn in RULES.items():
            sev = policy.severity.get(rule, "WARN")
            if sev == "off":
                continue
            out = fn(t, th)
            if out is None:
                continue
            fired, value, limit, msg = out
            results.append(RuleResult(rule, t["name"], sev, bool(fired), value, limit, f"{t['name']}: {msg}"))
    fired = [r for r in results if r.fired]
    level = "FAIL" if any(r.severity == "FAIL" for r in fired) else "WARN" if fired else "PASS"
    reasons = tuple(f"[{r.severity}] {r.rule}: {r.message}" for r in fired)
    return Verdict(level, reasons, tuple(results))
