"""Gate: turn a comparison into PASS / WARN / FAIL with every rule's numbers.

A policy is a set of thresholds with defaults in code (``Thresholds``), overridden by the
suite's ``policy:`` block and then by ``--policy FILE`` (YAML), globally or per task::

    max_acc_drop: 0.01              # thresholds at the top level apply to every task
    tasks:
      demo_count: {max_acc_drop: 0.05, min_identity_rate: 0.9}
    severity: {identity: FAIL, stop_drift: "off"}   # FAIL, WARN or off, per rule

Unknown keys, wrong types and out-of-range values are rejected with a one-line
``PolicyError`` naming the file and the key. ``judge(tasks, policy, probes, groups)`` evaluates
every rule on every gated unit (a standalone ``TaskRow`` of ``compare.tables``, or a group's
pooled row; the overall row is reported, not gated), ``subtask_collapse`` on each subtask of
a group, and the rise rules on each ``ProbeRow``, and returns a ``Verdict``: the level, one
reason per rule that fired (with its numbers and limit) and one ``RuleOutcome`` per (task,
rule) for junit.xml. Exit codes: PASS 0,
WARN 0 (1 with --strict), FAIL 1. ``policy_to_dict`` writes a policy back in the YAML
form, so summary.json records the policy a verdict was reached under.

Every rule is registered (``harness.registry``) with its threshold fields, default severity
and Holm family; ``Thresholds``, ``DEFAULT_SEVERITY``, the policy's validation and the schema
are derived from the registrations. The rise rules (``nonterm``, ``loops``, ``premature``)
are one generic rule per registered detector (``harness.detectors``). A new rule is one
``@rule`` function (here, or in any module imported before the gate judges).

Rules and defaults:

=================  =====================================================  =======  =====
rule               fires when (per task)                                  default  sev.
=================  =====================================================  =======  =====
acc_drop           accuracy drop > max_acc_drop and the drop is           0.01     FAIL
                   significant (one-sided exact McNemar, Holm, < alpha)
negative_flips     NFR's Wilson 95% lower bound - noise_floor >           0.02     FAIL
                   max_negative_flip_rate, and (nfr_net_loss_only) the
                   negative flips significantly outnumber positive ones
nonterm            rise of non-termination (finish=length) rate >         0.01     FAIL
                   max_nonterm_rise and significant
loops              rise of tail-repetition rate > max_loop_rise and       0.01     FAIL
                   significant
premature          rise of premature-ending rate (empty, or <= 1/4 of     0.01     FAIL
                   the base's tokens; detectors.is_premature) >
                   max_premature_rise and significant
stop_drift         mean stop-token drift (nats) < min_stop_drift          -1.0     WARN
identity           byte-identical output rate < min_identity_rate         off      WARN
inconclusive       the drop detectable with 80% power > max_detectable_   0.05     WARN
                   drop, no drop detected and the delta's 95% CI does
                   not rule one out (too small to prove anything)
subtask_collapse   (per subtask of a group) accuracy drop >               0.10     FAIL
                   max_subtask_drop, beyond the noise floor, and
                   significant on its own (one-sided exact McNemar,
                   Holm across the group's subtasks, < alpha)
knowledge_loss     the 95% Wilson lower bound of the share of items lost  off      FAIL
                   with their knowledge (cause ``knowledge lost``,
                   harness/causes.py) > max_knowledge_loss_rate
format_loss        the same for the items lost to their form or stop      off      WARN
                   (empty, cut short, runaway, unparsed, format,
                   knowledge kept) > max_format_loss_rate
=================  =====================================================  =======  =====

The two cause rules let a team gate on why it forgot: ``max_knowledge_loss_rate: 0.01``
with ``severity: {acc_drop: WARN, negative_flips: WARN}`` FAILs on knowledge loss and only
WARNs on an accuracy drop that realignment would bring back.

Groups (lm-eval's ``mmlu``, ``bbh_zeroshot``): the gated units are the standalone tasks and
the groups. A group is judged as a whole by every rule above (bar ``subtask_collapse``) on
its pooled row, the paired statistics over all its subtasks' items, and counts once in each
Holm family, so a 57-subject group does not dilute the other tasks' tests 57-fold. Its
subtasks are not gated one by one (a few dozen items per subject would make each one
"inconclusive"); instead ``subtask_collapse`` flags a subtask whose own drop is large and
significant, with its own Holm family within each group: pooling hides a subject that
collapses (one subject of 57 losing 30 points moves the pooled accuracy by half a point),
and losing a whole domain is forgetting the gate exists to catch, hence FAIL by default.
The 10-point floor keeps it to collapses, not the ordinary spread of small subjects; a
subtask's thresholds are its group's (``tasks: {mmlu: {max_subtask_drop: 0.2}}``) with its
own settings on top. Measured (synthetic, 57 subjects, accuracy 0.6, 10% symmetric churn,
400 runs each): on nulls it never fired; one subject of 100 items losing 20 points fired
89% of the time, 35 points always; at 20 items per subject (``--limit 20``) it cannot
tell (5% at 35 points): collapse needs items, the pooled row still gates.

``alpha`` (0.05) is the false-alarm budget of each statistical rule family across the
gated units of a suite (its standalone tasks and groups); ``noise_floor`` (0.0) is the
share of items whose output changes between two runs of the base alone, whose flips count
as noise.

Calibration choices (tests/test_calibration.py measures them on null and planted-drop
comparisons):

- One-sided tests. The gate only ever fires on a *loss*, so it tests "candidate worse"
  one-sided: the exact binomial test of the discordant pairs, P(Bin(neg + pos, 1/2) >=
  neg). A two-sided test at alpha would spend half its budget on improvements the gate
  ignores (a 2.5% false-alarm rate bought with power lost). The report still shows the
  two-sided McNemar p of ``compare``.
- Holm across tasks, per rule family: the accuracy rules (acc_drop and negative_flips share
  one test), non-termination, tail repetition and premature endings. Each family's family-wise false-alarm
  rate is at most alpha.
- negative_flips is not an absolute count. On a null comparison (candidate drawn from the
  same per-item distribution as the base, i.e. churn without forgetting) the NFR equals
  the PFR in expectation and is as large as the churn itself, often several percent, so an
  absolute "NFR > 2%" rule (even with NFR's Wilson lower bound above the limit) fires on
  churn alone, nearly always. Without a run-to-run churn estimate the only distribution-free
  evidence of forgetting is the asymmetry between right->wrong and wrong->right flips, so
  by default the rule needs both: the NFR's Wilson lower bound above the limit (the flips
  are many, not a small-task fluke) and significantly more negative than positive flips
  (they are not churn). It adds to acc_drop the case of a significant net loss smaller than
  max_acc_drop that hides heavy forgetting. Teams whose bar is "no item may get worse, even
  if others get better" set ``nfr_net_loss_only: false`` (absolute mode) or
  ``min_identity_rate``; those rules then measure churn by design.
- Non-termination, loop and premature-ending rises are tested the same way (one-sided, Holm), from the two
  rates' counts with the discordance taken at its maximum, which is conservative (the task
  rows carry rates, not the per-item 2x2 table).
- Inconclusive: the minimum detectable drop at 80% power uses the gate's own test (one
  sided at alpha / number of tasks, the first Holm step) and the task's observed
  discordance. A task that cannot detect ``max_detectable_drop`` makes the verdict at best
  WARN "inconclusive", never a silent PASS (its severity can be FAIL, never off), unless
  the question is settled anyway: a drop was detected (acc_drop reports it), or the
  delta's 95% interval excludes a drop of that size (e.g. a task whose new skill brings
  many positive flips: high churn, low power, but no drop possible), or the candidate's
  files are byte-identical to the base's (same fingerprint: the same greedy answers on
  every item, sampled or not; the regress-an-identical-copy check passes). It is
  deliberately separate from ``max_acc_drop``: detecting a 1-point drop needs ~10k items
  per task at typical churn, so tying the two would make every suite inconclusive.
- The point threshold ``max_acc_drop`` is a practical-significance floor, not the drop
  the gate guarantees to catch; the significance test decides. Measured (synthetic items,
  accuracy 0.8, ~10% churn): a 3-point drop in a 1,000-item task fires 84% of the time
  (54% when it is one of five tasks, after Holm); nulls fire 3.6-4%. Power falls as churn
  rises: at 1,000 items, 80% power for 3 points needs churn under ~12%.
- A task's own setting beats a global one, whatever the layer; ``override(policy, ...)`` sets a
  value everywhere (the measured noise floor).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from harness import detectors as _detectors  # noqa: F401  (registers the detectors and their rise rules)
from harness import stats
from harness.errors import PolicyError
from harness.options import Spec
from harness.registry import (
    Evidence,
    Family,
    GatedRow,
    Outcome,
    Policy,
    Rule,
    Threshold,
    Thresholds,
    ThresholdValue,
    default_severity,
    p_drop,
    p_rise,
    register_threshold,
    rule,
    rules,
    thresholds,
)
from harness.text import pct, pts
from harness.types import LEVELS, JsonObject, ProbeRow, RuleOutcome, TaskRow, Verdict, gated_units

# Re-exported: the gate's records and registry types, for callers that know only the gate.
__all__ = [
    "LEVELS", "DEFAULT_SEVERITY", "Evidence", "Outcome", "Policy", "RuleOutcome", "Thresholds", "Verdict",
    "judge", "load_policy_file", "override", "p_drop", "p_rise", "parse_policy", "policy_to_dict",
]  # fmt: skip


class _DefaultSeverity(Mapping[str, str]):
    """Each registered rule's default severity (a live view of the registry)."""

    def __getitem__(self, key: str) -> str:
        return default_severity()[key]

    def __iter__(self) -> Iterator[str]:
        return iter([r.name for r in rules()])

    def __len__(self) -> int:
        return len(rules())


DEFAULT_SEVERITY: Mapping[str, str] = _DefaultSeverity()

_RATE = Spec(at_least=0, at_most=1)
_ALPHA = Spec(help="false-alarm budget of each statistical rule family across the gated units", above=0, at_most=0.25)
_NOISE = Spec(help="share of items whose output changes between two runs of the base", at_least=0, at_most=1)
ALPHA = register_threshold(Threshold("alpha", 0.05, _ALPHA))
NOISE_FLOOR = register_threshold(Threshold("noise_floor", 0.0, _NOISE))


def _drop_p(row: GatedRow) -> float | None:
    return p_drop(row.negative_flips, row.positive_flips) if isinstance(row, TaskRow) and row.n else None


DROP = Family("drop", _drop_p)  # acc_drop and negative_flips share one test


def override(policy: Policy, **values: Any) -> Policy:
    """The same policy with ``values`` set for every task (e.g. a measured noise floor)."""
    known = thresholds()
    unknown = set(values) - set(known)
    if unknown:
        raise PolicyError(f"override: unknown policy key {sorted(unknown)[0]!r}")
    checked = {k: known[k].check(v, "override") for k, v in values.items()}
    tasks = {name: {k: v for k, v in own.items() if k not in checked} for name, own in policy.tasks.items()}
    return Policy(policy.defaults.replace(**checked), tasks, dict(policy.severity))


# -- policy parsing -------------------------------------------------------------------


def _overrides(raw: Any, where: str) -> dict[str, ThresholdValue]:
    """Checked threshold values of one mapping (the keys it sets, nothing else)."""
    if not isinstance(raw, dict):
        raise PolicyError(f"{where}: expected a mapping of thresholds, got {type(raw).__name__}")
    known = thresholds()
    for k in raw:
        if k not in known:
            raise PolicyError(f"{where}: unknown policy key {k!r} (known: {', '.join(known)}, tasks, severity)")
    return {k: known[k].check(v, where) for k, v in raw.items()}


def _severity(raw: Any, base: Mapping[str, str], where: str) -> dict[str, str]:
    if not isinstance(raw, dict):
        raise PolicyError(f"{where}: policy key 'severity' must map rule names to FAIL, WARN or off")
    out = dict(base)
    by_name = {r.name: r for r in rules()}
    for name, level in raw.items():
        if name not in by_name:
            raise PolicyError(f"{where}: unknown rule {name!r} in 'severity' (rules: {', '.join(by_name)})")
        # YAML 1.1 reads a bare `off` as false; take it to mean "off".
        lvl = "OFF" if level is False else level.upper() if isinstance(level, str) else ""
        allowed = ("FAIL", "WARN") if by_name[name].never_off else ("FAIL", "WARN", "off")
        if lvl not in allowed and not (lvl == "OFF" and "off" in allowed):
            raise PolicyError(f"{where}: severity.{name} must be one of {', '.join(allowed)}, got {level!r}")
        out[name] = "off" if lvl == "OFF" else lvl
    return out


def parse_policy(raw: Any, base: Policy | None = None, where: str = "policy") -> Policy:
    """Build a Policy from a mapping layered on ``base`` (the code defaults when None).

    Top-level thresholds change the defaults, ``tasks.NAME`` overrides one task's keys,
    ``severity`` maps rules to FAIL, WARN or off.
    """
    base = base or Policy()
    if raw is None:
        return base
    if not isinstance(raw, dict):
        raise PolicyError(f"{where}: a policy must be a mapping, got {type(raw).__name__}")
    raw = dict(raw)
    task_raw = raw.pop("tasks", None)
    sev_raw = raw.pop("severity", None)
    defaults = base.defaults.replace(**_overrides(raw, where))
    tasks = {name: dict(own) for name, own in base.tasks.items()}
    if task_raw is not None:
        if not isinstance(task_raw, dict):
            raise PolicyError(f"{where}: policy key 'tasks' must map task names to thresholds")
        for name, t in task_raw.items():
            key = str(name)
            tasks[key] = {**tasks.get(key, {}), **_overrides(t, f"{where}: tasks.{key}")}
    severity = _severity(sev_raw, base.severity, where) if sev_raw is not None else dict(base.severity)
    return Policy(defaults, tasks, severity)


def load_policy_file(path: str | Path, base: Policy | None = None) -> Policy:
    """Read a YAML policy file and layer it on ``base``; errors name the file."""
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


def policy_to_dict(policy: Policy) -> JsonObject:
    """The policy in its YAML form (``parse_policy`` of it gives the same policy back)."""
    return {
        **dict(policy.defaults),
        "tasks": {name: dict(own) for name, own in policy.tasks.items()},
        "severity": dict(policy.severity),
    }


# -- the evidence the rules share ------------------------------------------------------


def _evidence(rows: Sequence[GatedRow], policy: Policy, same_files: bool = False) -> dict[str, Evidence]:
    """Per row: the one-sided p of each rule family, Holm-adjusted across the rows."""
    families = {r.family.name: r.family for r in rules("unit") if r.family is not None}
    adjusted: dict[str, dict[str, float]] = {r.name: {} for r in rows}
    for fam in families.values():
        raw = {r.name: p for r in rows if (p := fam.p(r)) is not None}
        for name, p in zip(raw, stats.holm(list(raw.values()))):
            adjusted[name][fam.name] = p
    m = max(sum(1 for r in rows if _drop_p(r) is not None), 1)
    out = {}
    for r in rows:
        mdd = 0.0
        if isinstance(r, TaskRow):
            alpha = policy.for_task(r.name).alpha
            psi = (r.negative_flips + r.positive_flips) / r.n if r.n else 0.0
            # one-sided at alpha / m is two-sided at 2 * alpha / m
            mdd = stats.min_detectable_drop(r.n, psi, alpha=2 * alpha / m)
        out[r.name] = Evidence(adjusted[r.name], mdd, same_files)
    return out


# -- rules ----------------------------------------------------------------------------
# rank orders the rules in every output: the accuracy rules (10-20), the detectors' rises
# (30, harness.detectors), then the rest (40-60); subtask rules judge each subtask.


@rule("acc_drop", "FAIL", family=DROP, rank=10,
      thresholds=(Threshold("max_acc_drop", 0.01, _RATE),))  # fmt: skip
def _acc_drop(t: GatedRow, ev: Evidence, th: Thresholds) -> Outcome | None:
    if not isinstance(t, TaskRow):
        return None
    drop, p = -t.delta, ev.p_of("drop")
    beyond_noise = t.negative_flips - t.positive_flips > th.noise_floor * t.n
    fired = drop > th.max_acc_drop and p < th.alpha and beyond_noise
    msg = (
        f"accuracy {t.acc_base:.3f} -> {t.acc_candidate:.3f} ({pts(t.delta)}, "
        f"95% CI [{pts(t.delta_lo)}, {pts(t.delta_hi)}]; one-sided McNemar p={p:.2g} (Holm), "
        f"alpha {th.alpha:g}); limit: drop {pts(-th.max_acc_drop)[1:]}"
    )
    return Outcome(fired, drop, th.max_acc_drop, msg, p)


_NFR = (Threshold("max_negative_flip_rate", 0.02, _RATE), Threshold("nfr_net_loss_only", True, boolean=True))


@rule("negative_flips", "FAIL", family=DROP, rank=20, thresholds=_NFR)
def _negative_flips(t: GatedRow, ev: Evidence, th: Thresholds) -> Outcome | None:
    if not isinstance(t, TaskRow):
        return None
    lo = t.nfr_lo - th.noise_floor
    p = ev.p_of("drop")
    many = lo > th.max_negative_flip_rate
    net = p < th.alpha
    fired = many and (net or not th.nfr_net_loss_only)
    msg = (
        f"{t.negative_flips} of {t.n} items right->wrong (NFR {pct(t.nfr)}, 95% CI "
        f"[{pct(t.nfr_lo)}, {pct(t.nfr_hi)}]) vs {t.positive_flips} wrong->right "
        f"(PFR {pct(t.pfr)}; one-sided p={p:.2g} (Holm)); limit: NFR lower bound "
        f"{pct(th.max_negative_flip_rate)}" + (" with a significant net loss" if th.nfr_net_loss_only else "")
    )
    return Outcome(fired, t.nfr, th.max_negative_flip_rate, msg, p)


@rule("stop_drift", "WARN", rank=40, thresholds=(Threshold("min_stop_drift", -1.0),))
def _stop_drift(t: GatedRow, ev: Evidence, th: Thresholds) -> Outcome | None:
    d = t.stop_drift_mean if isinstance(t, TaskRow) else None
    if d is None or math.isnan(d):
        return None
    msg = f"mean stop-token drift {d:+.2f} nats; limit {th.min_stop_drift:+.2f} nats"
    return Outcome(d < th.min_stop_drift, d, th.min_stop_drift, msg)


@rule("identity", "WARN", rank=50, thresholds=(Threshold("min_identity_rate", None, _RATE, optional=True),))
def _identity(t: GatedRow, ev: Evidence, th: Thresholds) -> Outcome | None:
    if th.min_identity_rate is None or not isinstance(t, TaskRow):
        return None
    r = t.identity_rate
    msg = f"{pct(r)} of outputs byte-identical to the base's; limit {pct(th.min_identity_rate)}"
    return Outcome(r < th.min_identity_rate, r, th.min_identity_rate, msg)


# a too-small task may never pass silently: never off
@rule("inconclusive", "WARN", rank=60, never_off=True,
      thresholds=(Threshold("max_detectable_drop", 0.05, Spec(above=0, at_most=1)),))  # fmt: skip
def _inconclusive(t: GatedRow, ev: Evidence, th: Thresholds) -> Outcome | None:
    if not isinstance(t, TaskRow):
        return None
    mdd, limit = ev.mdd_gate, th.max_detectable_drop
    if ev.same_files:  # the same files give the same greedy answers, sampled or not: nothing to detect
        return Outcome(False, mdd, limit, "the candidate's files are byte-identical to the base's (same fingerprint)")
    # Moot when a drop was detected, or when the interval already rules out a drop of
    # `limit` (a task that learned a new skill has high churn but proves no big drop).
    open_question = ev.p_of("drop") >= th.alpha and t.delta_lo < -limit
    msg = (
        f"with {t.n} items the smallest drop this gate detects with 80% power is "
        f"{100 * mdd:.1f} pts and the 95% CI [{pts(t.delta_lo)}, {pts(t.delta_hi)}] does not "
        f"rule out a {100 * limit:.1f}-pt drop; limit {100 * limit:.1f} pts (add items)"
    )
    return Outcome(mdd > limit and open_question, mdd, limit, msg)


# Judged on each subtask of a group (the group itself gets the unit rules on its pooled row).
@rule("subtask_collapse", "FAIL", scope="subtask", rank=70,
      thresholds=(Threshold("max_subtask_drop", 0.10, _RATE),))  # fmt: skip
def _subtask_collapse(t: GatedRow, ev: Evidence, th: Thresholds) -> Outcome | None:
    if not isinstance(t, TaskRow) or t.group is None:
        return None
    drop, p = -t.delta, ev.p_of("drop")
    beyond_noise = t.negative_flips - t.positive_flips > th.noise_floor * t.n
    fired = drop > th.max_subtask_drop and p < th.alpha and beyond_noise
    msg = (
        f"subtask of {t.group}: accuracy {t.acc_base:.3f} -> {t.acc_candidate:.3f} ({pts(t.delta)}; "
        f"{t.negative_flips} right->wrong vs {t.positive_flips} wrong->right of {t.n} items; one-sided McNemar "
        f"p={p:.2g} (Holm across the group's subtasks), alpha {th.alpha:g}); limit: drop "
        f"{pts(-th.max_subtask_drop)[1:]}"
    )
    return Outcome(fired, drop, th.max_subtask_drop, msg, p)


def _cause_rate(label: str, k: int, t: TaskRow, limit: float) -> Outcome:
    lo, _ = stats.wilson_interval(k, t.n)
    rate = k / t.n if t.n else 0.0
    msg = f"{k} of {t.n} items lost to {label} ({pct(rate)}, 95% CI lower bound {pct(lo)}); limit {pct(limit)}"
    return Outcome(lo > limit, rate, limit, msg)


# Why it forgot (harness/causes.py): off by default; a team FAILs on knowledge loss and WARNs on
# the losses that realignment brings back (format, stop).
@rule("knowledge_loss", "FAIL", rank=80, thresholds=(Threshold(
    "max_knowledge_loss_rate", None, Spec(help="largest share of items lost with their knowledge (95% lower bound)",
                                          at_least=0, at_most=1), optional=True),))  # fmt: skip
def _knowledge_loss(t: GatedRow, ev: Evidence, th: Thresholds) -> Outcome | None:
    if th.max_knowledge_loss_rate is None or not isinstance(t, TaskRow):
        return None
    return _cause_rate("knowledge loss", t.knowledge_lost, t, th.max_knowledge_loss_rate)


@rule("format_loss", "WARN", rank=81, thresholds=(Threshold(
    "max_format_loss_rate", None, Spec(help="largest share of items lost to their form or stop (95% lower bound)",
                                       at_least=0, at_most=1), optional=True),))  # fmt: skip
def _format_loss(t: GatedRow, ev: Evidence, th: Thresholds) -> Outcome | None:
    if th.max_format_loss_rate is None or not isinstance(t, TaskRow):
        return None
    return _cause_rate("format or stop loss", t.format_lost, t, th.max_format_loss_rate)


def _outcomes(scoped: Sequence[Rule], t: GatedRow, ev: Evidence, th: Thresholds, policy: Policy) -> list[RuleOutcome]:
    """The outcome of each rule of ``scoped`` that is on and applies to row ``t``."""
    out = []
    for r in scoped:
        sev = policy.severity.get(r.name, r.severity)
        if sev == "off":
            continue
        o = r.check(t, ev, th)
        if o is not None:
            out.append(RuleOutcome(r.name, t.name, sev, bool(o.fired), o.value, o.limit, o.message, o.p_value))
    return out


def judge(
    tasks: Sequence[TaskRow],
    policy: Policy,
    probes: Sequence[ProbeRow] = (),
    groups: Sequence[TaskRow] = (),
    same_files: bool = False,
) -> Verdict:
    """Apply every rule to every gated unit and probe row (the overall row is reported, not
    gated). A probe row gets only the rules its numbers support (the rises).

    The gated units are the standalone tasks and the ``groups`` (``compare.tables``), in
    suite order (``types.gated_units``): a group is judged on its pooled row and counts once
    in each Holm family; each of its subtasks (a task row naming the group) gets the
    subtask rules, Holm-adjusted across the group's subtasks. Without groups every task is a
    unit."""
    group_names = {g.name for g in groups}
    rows: list[GatedRow] = [*gated_units(tasks, groups), *probes]
    evidence = _evidence(rows, policy, same_files)
    unit_rules, subtask_rules = rules("unit"), rules("subtask")
    results: list[RuleOutcome] = []
    for row in rows:
        results += _outcomes(unit_rules, row, evidence[row.name], policy.for_task(row.name), policy)
        subs = [s for s in tasks if s.group == row.name] if row.name in group_names else []
        adjusted = stats.holm([p_drop(s.negative_flips, s.positive_flips) for s in subs])
        for s, p in zip(subs, adjusted):
            th = policy.for_subtask(s.name, row.name)
            results += _outcomes(subtask_rules, s, Evidence({"drop": p}), th, policy)
    fired_rules = [r for r in results if r.fired]
    level = "FAIL" if any(r.severity == "FAIL" for r in fired_rules) else "WARN" if fired_rules else "PASS"
    reasons = tuple(f"[{r.severity}] {r.task} {r.rule}: {r.message}" for r in fired_rules)
    return Verdict(level, reasons, tuple(results))
