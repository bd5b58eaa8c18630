"""Options declared once: a dataclass field with an ``option(...)`` spec (a leaf module).

A field's ``Spec`` says how it is set and which values it takes: its flag, help, allowed
values, bounds. From that one declaration ``add_arguments`` makes the argparse flags,
``values`` reads them back from the parsed namespace, and ``check`` (called by the
dataclass's ``__post_init__``) refuses a bad value with a one-line ``RegressError`` that
names the option by its flag (``--batch-size must be at least 1 (got 0)``), so a config
built in code is checked as one built from the command line. ``harness.config`` (the run's
options) and each backend module (its own options, ``harness.backends``) declare with it.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from harness.errors import RegressError

_SPEC = "regress.option"
T = TypeVar("T")


@dataclass(frozen=True)
class Spec:
    """How one field is set and which values it takes. Bounds and choices do not apply to None
    (the backend's default)."""

    help: str = ""
    flag: str | None = None  # "--store" where the flag is not the field's name with dashes
    cli: bool = True  # False: settable in code only (no flag today)
    positional: bool = False  # an argument without a flag (a tuple: one or more of them)
    metavar: str | None = None
    cli_default: Callable[[], Any] | None = None  # where the flag's default is not the field's
    choices: tuple[str, ...] | Callable[[], Iterable[str]] = ()  # a callable: names known only at run time
    at_least: float | None = None
    above: float | None = None
    at_most: float | None = None

    def allowed(self) -> tuple[str, ...]:
        return tuple(self.choices() if callable(self.choices) else self.choices)


def option(default: Any = dataclasses.MISSING, **spec: Any) -> Any:
    """A dataclass field with its ``Spec`` (the keyword arguments)."""
    return field(default=default, metadata={_SPEC: Spec(**spec)})


def _specs(cls: type) -> list[tuple[dataclasses.Field[Any], Spec]]:
    return [(f, f.metadata[_SPEC]) for f in dataclasses.fields(cls) if _SPEC in f.metadata]


def flag_of(f: dataclasses.Field[Any], spec: Spec) -> str:
    if spec.positional:
        return f.name
    return spec.flag or "--" + f.name.replace("_", "-")


def problem(name: str, label: str, spec: Spec, value: Any) -> str | None:
    """What is wrong with ``value`` (None: nothing); ``label`` is how the user set it."""
    allowed = spec.allowed()
    if allowed and value not in allowed:
        return f"unknown {name} {value!r}; choose one of: {', '.join(allowed)}"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    # each test is "value within bound", so that NaN fails every one
    bounds = [
        (spec.at_least, "at least", lambda lo: value >= lo),
        (spec.above, "above", lambda lo: value > lo),
        (spec.at_most, "at most", lambda hi: value <= hi),
    ]
    if all(ok(b) for b, _, ok in bounds if b is not None):
        return None
    rule = " and ".join(f"{word} {b:g}" for b, word, _ in bounds if b is not None)
    return f"{label} must be {rule} (got {value!r})"


def check(obj: Any) -> None:
    """Raise one ``RegressError`` for the first field of ``obj`` whose value its spec refuses."""
    for f, spec in _specs(type(obj)):
        value = getattr(obj, f.name)
        if value is None:
            continue
        # named by the flag a user types; a code-only field by its own name
        bad = problem(f.name, flag_of(f, spec) if spec.cli else f.name, spec, value)
        if bad:
            raise RegressError(bad)


def _argparse_type(hint: Any) -> tuple[Any, bool]:
    """(the scalar type argparse converts to, whether the field is a repeatable tuple)."""
    if isinstance(hint, types.UnionType):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    if typing.get_origin(hint) is tuple:
        return typing.get_args(hint)[0], True
    return hint, False


def add_arguments(p: argparse.ArgumentParser, cls: type, only: Iterable[str] | None = None) -> None:
    """The flags of ``cls``'s command-line fields (those named in ``only``, if given): a bool is
    a switch, a tuple a repeatable flag (a positional tuple: one or more values), a field
    without a default a required flag."""
    hints = typing.get_type_hints(cls)
    for f, spec in _specs(cls):
        if spec.cli and (only is None or f.name in only):
            p.add_argument(flag_of(f, spec), **_argparse_kwargs(f, spec, hints[f.name]))


class _Flag(typing.TypedDict, total=False):
    """``ArgumentParser.add_argument``'s keyword arguments, as regress uses them."""

    action: str
    type: Any
    nargs: str
    default: Any
    required: bool
    metavar: str | None
    help: str


def _argparse_kwargs(f: dataclasses.Field[Any], spec: Spec, hint: Any) -> _Flag:
    default: Any = spec.cli_default() if spec.cli_default else f.default
    kind, repeated = _argparse_type(hint)
    if kind is bool:
        return {"action": "store_true", "default": default, "help": spec.help}
    kw: _Flag = {"type": kind, "help": spec.help}
    if spec.positional:
        return {**kw, "nargs": "+"} if repeated else kw
    if default is dataclasses.MISSING:
        kw["required"] = True
    else:
        kw["default"] = list(default) if repeated else default
    if repeated:
        return {**kw, "action": "append", "metavar": spec.metavar}
    names = spec.allowed()
    # choices are checked by the dataclass, not argparse, so both edges say the same line
    return {**kw, "metavar": "{" + ",".join(names) + "}" if names else spec.metavar}


def values(ns: argparse.Namespace, cls: type) -> dict[str, Any]:
    """Field name -> parsed value of ``cls``'s command-line fields (argparse's dest is the flag's)."""
    out = {}
    for f, spec in _specs(cls):
        if spec.cli:
            value = getattr(ns, flag_of(f, spec).lstrip("-").replace("-", "_"))
            out[f.name] = tuple(value) if isinstance(value, list) else value
    return out


def from_namespace(cls: type[T], ns: argparse.Namespace) -> T:
    """``cls`` built from its command-line fields in ``ns`` (so checked, as in code)."""
    return cls(**values(ns, cls))
