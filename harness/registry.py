"""Registries: every detector and every gate rule is one definition that carries its metadata.

A **detector** flags single items of the paired item table (``compare.pair``), for the base
and for the candidate; everything that depends on it is derived from its registration::

    @detector(name="nonterm", label="non-termination", column="non-term",
              plot="Non-termination (ran to token limit)", description="...")
    def nonterm(items: pd.DataFrame) -> Flags:
        return Flags(nonterminated(items["finish_base"]), nonterminated(items["finish_cand"]))

From it: ``compare`` adds the item columns ``nonterm_base``/``nonterm_cand`` (only on items of
the detector's ``kinds``), and each ``TaskRow`` its rates (``DetectorRate``; summary.json
``nonterm_rate_base``/``nonterm_rate_candidate``); the gate gets one "rise" rule (``nonterm``,
threshold ``max_nonterm_rise``, its own Holm family); report.md and report.html a column
(``column``), report.html a card (``label``), a panel of the degeneration plot (``plot``), a
badge and a filter of the flip explorer (``badge``, ``filter``); summary.schema.json the rates,
the rule and the threshold (``harness/report/schema.py``).

A **gate rule** is a check of one gated row (``TaskRow`` of a task or group, or the
termination probe's ``ProbeRow``) with the thresholds it reads declared with it::

    @rule(name="acc_drop", severity="FAIL", family=DROP, rank=10,
          thresholds=(Threshold("max_acc_drop", 0.01, Spec(at_least=0, at_most=1)),))
    def acc_drop(t: GatedRow, ev: Evidence, th: Thresholds) -> Outcome | None: ...

From the registrations: ``Thresholds`` (one value per registered threshold, its default
where unset), ``default_severity()``, the policy's validation (each threshold's ``Spec``, the
``option(...)`` checks of ``harness.config``), the order of junit.xml's cases and
summary.json's ``rules`` (``rank``, then registration order) and the schema's fragments.
Thresholds that several rules read (``alpha``, ``noise_floor``) are registered on their own
(``register_threshold``).

Registration happens at import: the built-in detectors in ``harness.detectors``, the
built-in rules in ``harness.gate``. ``registered(...)`` registers for the length of a
``with`` block (tests), and removes the registrations after.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import FrozenInstanceError, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from harness.errors import PolicyError
from harness.options import Spec, problem
from harness.text import pct, pts
from harness.types import DetectorRate, ProbeRow, TaskRow

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

GatedRow = TaskRow | ProbeRow  # a probe row has detector rates only: the accuracy rules skip it
Level = Literal["FAIL", "WARN", "off"]


# -- detectors ------------------------------------------------------------------------


@dataclass(frozen=True)
class Flags:
    """A detector's flags over the rows it was given (items of its kinds), base and candidate,
    and any further columns it adds, named in full (``loop_unit_cand``)."""

    base: np.ndarray
    cand: np.ndarray
    extra: Mapping[str, Sequence[Any]] = field(default_factory=dict)


FlagFn = Callable[["pd.DataFrame"], Flags]


@dataclass(frozen=True)
class Detector:
    """One detector and how it is shown. ``flag`` is called on the paired items of its
    ``kinds`` (columns ``compare.BASE_COLUMNS``, plus ``tokens_base``/``tokens_cand`` while
    pairing records); ``extra_columns`` maps each further column to its value on other items.
    The rise rule is ``rule`` (default: the name), threshold ``max_<name>_rise``."""

    name: str
    flag: FlagFn
    label: str  # what it measures, in the gate's messages and the report's cards
    column: str  # short column title (report.md, report.html)
    plot: str  # title of its panel in the degeneration plot
    description: str  # what the candidate's rate counts (summary.schema.json)
    kinds: tuple[str, ...] = ("generate_until",)
    filter: str | None = None  # label of its flip-explorer filter (None: no filter)
    badge: str | None = None  # explorer badge on an item the candidate is flagged on and the base not
    rule: str = ""
    severity: Level = "FAIL"
    max_rise: float = 0.01
    extra_columns: Mapping[str, Any] = field(default_factory=dict)
    rank: int = 30  # where its rule stands among the rules (see ``Rule.rank``)

    @property
    def rule_name(self) -> str:
        return self.rule or self.name

    @property
    def threshold(self) -> str:
        return f"max_{self.name}_rise"

    @property
    def columns(self) -> tuple[str, ...]:
        return (f"{self.name}_base", f"{self.name}_cand", *self.extra_columns)


_DETECTORS: dict[str, Detector] = {}


_LOADED: list[bool] = []  # non-empty once the built-ins are imported


def _builtins() -> None:
    """Import the modules that register the built-ins (once; a no-op while they import)."""
    if not _LOADED:
        import harness.gate  # noqa: F401  (imports harness.detectors too)

        _LOADED.append(True)


def detectors() -> tuple[Detector, ...]:
    """The registered detectors, in registration order."""
    _builtins()
    return tuple(_DETECTORS.values())


def register_detector(d: Detector) -> Detector:
    """Register a detector and its rise rule; a name taken already is an error."""
    if d.name in _DETECTORS:
        raise ValueError(f"detector {d.name!r} is registered already")
    register_rule(_rise_rule(d))
    _DETECTORS[d.name] = d
    return d


def detector(**meta: Any) -> Callable[[FlagFn], FlagFn]:
    """Decorator: register the function as a detector's ``flag`` (``meta``: ``Detector``'s fields)."""

    def register(fn: FlagFn) -> FlagFn:
        register_detector(Detector(flag=fn, **meta))
        return fn

    return register


# -- gate rules -----------------------------------------------------------------------


@dataclass(frozen=True)
class Threshold:
    """One policy key: its default, the values it takes (``Spec`` bounds), and whether it is a
    switch (``boolean``) or may be null (``optional``: the rule is off)."""

    name: str
    default: ThresholdValue
    spec: Spec = Spec()
    boolean: bool = False
    optional: bool = False

    def check(self, v: Any, where: str) -> ThresholdValue:
        """The value, checked: a one-line ``PolicyError`` naming ``where`` and the key."""
        label = f"{where}: policy key {self.name!r}"
        if v is None and self.optional:
            return None
        if self.boolean:
            if not isinstance(v, bool):
                raise PolicyError(f"{label} must be true or false, got {v!r}")
            return v
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise PolicyError(f"{label} must be a number, got {v!r}")
        bad = problem(self.name, label, self.spec, v)
        if bad:
            raise PolicyError(bad)
        return float(v)


@dataclass(frozen=True)
class Family:
    """A Holm family: rules that share one one-sided p-value per row (``p``; None where the
    row has no number for it), Holm-adjusted across the gated rows."""

    name: str
    p: Callable[[GatedRow], float | None]


@dataclass(frozen=True)
class Evidence:
    """What the rules of one row share: the Holm-adjusted p of each family (1 where the row
    has none), the drop the gate detects with 80% power (tasks only), and whether the two
    checkpoints' files are byte-identical (same fingerprint)."""

    p: Mapping[str, float] = field(default_factory=dict)
    mdd_gate: float = 0.0
    same_files: bool = False

    def p_of(self, family: str) -> float:
        return self.p.get(family, 1.0)


@dataclass(frozen=True)
class Outcome:
    """What a rule measured on one row: whether it fired, the value, its limit, the message."""

    fired: bool
    value: float | None
    limit: float | None
    message: str
    p_value: float | None = None


RuleFn = Callable[[GatedRow, Evidence, "Thresholds"], Outcome | None]


@dataclass(frozen=True)
class Rule:
    """One gate rule. ``check`` returns None where it does not apply to a row. ``scope``:
    ``unit`` rules judge each gated unit and probe row, ``subtask`` rules each subtask of a
    group. ``rank`` orders the rules in every output (junit.xml, summary.json), registration
    order breaking ties; ``never_off``: the severity cannot be ``off``."""

    name: str
    check: RuleFn
    severity: Level
    thresholds: tuple[Threshold, ...] = ()
    family: Family | None = None
    scope: Literal["unit", "subtask"] = "unit"
    rank: int = 100
    never_off: bool = False


_RULES: dict[str, Rule] = {}
_SHARED: dict[str, Threshold] = {}  # thresholds several rules read (alpha, noise_floor)
ThresholdValue = float | bool | None


@dataclass
class _Derived:
    """Tables derived from the registrations, emptied by every (un)registration."""

    rules: tuple[Rule, ...] | None = None
    thresholds: dict[str, Threshold] | None = None


_CACHE = _Derived()


def rules(scope: str | None = None) -> tuple[Rule, ...]:
    """The registered rules in output order (``rank``, then registration), of one scope or all."""
    _builtins()
    if _CACHE.rules is None:
        _CACHE.rules = tuple(r for _, r in sorted(enumerate(_RULES.values()), key=lambda ir: (ir[1].rank, ir[0])))
    return tuple(r for r in _CACHE.rules if scope is None or r.scope == scope)


def _claim(names: Sequence[str], what: str) -> None:
    taken = set(thresholds()) | set(_RULES)
    clash = [n for n in names if n in taken]
    if clash or len(set(names)) != len(names):
        raise ValueError(f"{what}: name {(clash or list(names))[0]!r} is registered already")


def register_rule(r: Rule) -> Rule:
    _claim([r.name, *(t.name for t in r.thresholds)], f"rule {r.name!r}")
    _RULES[r.name] = r
    _CACHE.rules = _CACHE.thresholds = None
    return r


def register_threshold(t: Threshold) -> Threshold:
    """A threshold of no single rule (``alpha``, ``noise_floor``)."""
    _claim([t.name], f"threshold {t.name!r}")
    _SHARED[t.name] = t
    _CACHE.rules = _CACHE.thresholds = None
    return t


def rule(name: str, severity: Level, **meta: Any) -> Callable[[RuleFn], RuleFn]:
    """Decorator: register the function as a rule's ``check`` (``meta``: ``Rule``'s fields)."""

    def register(fn: RuleFn) -> RuleFn:
        register_rule(Rule(name=name, check=fn, severity=severity, **meta))
        return fn

    return register


def thresholds() -> Mapping[str, Threshold]:
    """Every policy threshold by name: each rule's, in rule order, then the shared ones."""
    if _CACHE.thresholds is None:
        _CACHE.thresholds = {**{t.name: t for r in rules() for t in r.thresholds}, **_SHARED}
    return _CACHE.thresholds


def default_severity() -> dict[str, str]:
    return {r.name: r.severity for r in rules()}


@contextmanager
def registered(*items: Detector | Rule | Threshold) -> Iterator[None]:
    """Register ``items`` for the length of the block, then remove them (tests, plugins)."""
    done: list[Detector | Rule | Threshold] = []
    try:
        for it in items:
            if isinstance(it, Detector):
                register_detector(it)
            elif isinstance(it, Rule):
                register_rule(it)
            else:
                register_threshold(it)
            done.append(it)
        yield
    finally:
        for it in reversed(done):
            if isinstance(it, Detector):
                del _DETECTORS[it.name], _RULES[it.rule_name]
            elif isinstance(it, Rule):
                del _RULES[it.name]
            else:
                del _SHARED[it.name]
            _CACHE.rules = _CACHE.thresholds = None


# -- the generic rise rule of a detector -------------------------------------------------


def p_drop(neg: int, pos: int) -> float:
    """One-sided exact McNemar p for "candidate worse": P(Bin(neg + pos, 1/2) >= neg)."""
    from scipy import stats as sps

    total = neg + pos
    return float(sps.binom.sf(neg - 1, total, 0.5)) if total and neg else 1.0


def p_rise(k_base: int, k_cand: int, n: int) -> float:
    """One-sided p that a 0/1 event (non-termination, loop) got more frequent, from counts.

    Without the paired table, take the largest discordance the margins allow: the p-value
    of the exact sign test grows with the discordance at a fixed difference, so this bound
    is conservative (valid, a little less powerful than the paired test).
    """
    if k_cand <= k_base:
        return 1.0
    down = min(k_base, n - k_cand)  # base had it, candidate not
    up = down + k_cand - k_base
    return p_drop(up, down)


def _rise_p(name: str) -> Callable[[GatedRow], float | None]:
    def p(row: GatedRow) -> float | None:
        r = row.rate(name)
        if r is None or not r.n:
            return None
        return p_rise(round(r.base * r.n), round(r.candidate * r.n), r.n)

    return p


def _rise_rule(d: Detector) -> Rule:
    """The detector's rate rose by more than ``max_<name>_rise`` and significantly (one-sided,
    Holm across the gated rows within the detector's own family)."""

    def check(row: GatedRow, ev: Evidence, th: Thresholds) -> Outcome | None:
        r: DetectorRate | None = row.rate(d.name)
        if r is None or not r.n:
            return None
        b, c, limit, p = r.base, r.candidate, th[d.threshold], ev.p_of(d.name)
        msg = (
            f"{d.label} {pct(b)} -> {pct(c)} of {r.n} generations ({pts(c - b)}; "
            f"one-sided p={p:.2g} (Holm)); limit: rise {pts(limit)[1:]}"
        )
        return Outcome(c - b > limit and p < th.alpha, c - b, limit, msg, p)

    limit = Threshold(d.threshold, d.max_rise, Spec(help=f"largest allowed rise of the {d.label} rate",
                                                    at_least=0, at_most=1))  # fmt: skip
    return Rule(d.rule_name, check, d.severity, (limit,), Family(d.name, _rise_p(d.name)), rank=d.rank)


# -- thresholds and policy ---------------------------------------------------------------


class Thresholds(Mapping[str, Any]):
    """The gate's limits for one task: a value for every registered threshold, its default
    where not set (``th.max_acc_drop`` or ``th["max_acc_drop"]``). Immutable; ``replace``
    gives a copy with some values set. Values are taken as given: ``gate.parse_policy``
    checks them."""

    __slots__ = ("_set",)

    def __init__(self, **values: Any) -> None:
        unknown = set(values) - set(thresholds())
        if unknown:
            raise TypeError(f"unknown threshold {sorted(unknown)[0]!r}")
        object.__setattr__(self, "_set", dict(values))

    def __getitem__(self, key: str) -> Any:
        if key in self._set:
            return self._set[key]
        return thresholds()[key].default

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None

    def __setattr__(self, key: str, value: Any) -> None:
        raise FrozenInstanceError(f"cannot assign to field {key!r}")

    def __iter__(self) -> Iterator[str]:
        return iter(thresholds())

    def __len__(self) -> int:
        return len(thresholds())

    def __repr__(self) -> str:
        return f"Thresholds({', '.join(f'{k}={v!r}' for k, v in self.items())})"

    def replace(self, **values: Any) -> Thresholds:
        return Thresholds(**{**self._set, **values})


@dataclass(frozen=True)
class Policy:
    """Default thresholds, per-task overrides (only the keys a task sets), rule severities.

    A task's own setting wins over the global one; a later layer (``--policy`` over the
    suite's block over the code defaults) wins over an earlier one at the same level.
    Built and checked by ``gate.parse_policy``.
    """

    defaults: Thresholds = field(default_factory=Thresholds)
    tasks: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    severity: Mapping[str, str] = field(default_factory=default_severity)

    def for_task(self, name: str) -> Thresholds:
        own = self.tasks.get(name)
        return self.defaults.replace(**own) if own else self.defaults

    def for_subtask(self, name: str, group: str) -> Thresholds:
        """A subtask's limits: its group's, with the subtask's own settings on top."""
        own = self.tasks.get(name)
        return self.for_task(group).replace(**own) if own else self.for_task(group)
