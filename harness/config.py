"""One validated configuration object per run, built at the CLI edge and passed down whole.

``BackendOptions`` holds what any backend may take (unset fields mean the backend's own
default); ``RunConfig`` names the suite, backend, options and output places.

Each option is declared once, as a field with an ``option(...)`` spec: its flag, help,
allowed values. From that one declaration ``add_arguments`` makes the argparse flags,
``from_args`` builds the object from the parsed namespace, and ``__post_init__`` checks the
values, so a config built in code is checked as one built from the command line. Adding an
option is one field. An invalid value is a one-line ``RegressError`` that names the option
by its flag (``--batch-size must be at least 1 (got 0)``).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import types
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from harness.errors import RegressError


def cache_dir() -> Path:
    """regress's own cache folder (``$REGRESS_CACHE``, else ``~/.cache/regress``): file hashes,
    lm-eval's task index."""
    return Path(os.environ.get("REGRESS_CACHE", Path.home() / ".cache" / "regress"))


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


def _values(ns: argparse.Namespace, cls: type) -> dict[str, Any]:
    """Field name -> parsed value of ``cls``'s command-line fields (argparse's dest is the flag's)."""
    out = {}
    for f, spec in _specs(cls):
        if spec.cli:
            value = getattr(ns, flag_of(f, spec).lstrip("-").replace("-", "_"))
            out[f.name] = tuple(value) if isinstance(value, list) else value
    return out


def from_namespace(cls: type[T], ns: argparse.Namespace) -> T:
    """``cls`` built from its command-line fields in ``ns`` (so checked, as in code)."""
    return cls(**_values(ns, cls))


def _backend_names() -> Iterable[str]:
    from harness.backends import BACKENDS  # the backends package imports this module

    return BACKENDS


@dataclass(frozen=True)
class BackendOptions:
    batch_size: int | None = option(None, at_least=1, help="prompts per batch (hf)")
    dtype: str | None = option(None, choices=("auto", "float32", "bfloat16", "float16"), help="weights' dtype")
    device: str | None = option(None, help="torch device: cpu, cuda, cuda:1 (hf)")
    max_model_len: int | None = option(None, at_least=1, help="context length (vllm)")
    tensor_parallel_size: int = option(1, at_least=1, help="GPUs per model replica (vllm)")
    data_parallel_size: int = option(1, at_least=1, help="model replicas (vllm)")
    gpu_memory_utilization: float | None = option(None, above=0, at_most=1, help="share of GPU memory (vllm)")
    enforce_eager: bool | None = option(None, cli=False)
    base_urls: tuple[str, ...] = option((), flag="--base-url", help="OpenAI-compatible server (repeatable)")
    api_model: str | None = option(None, help="model name the server knows (openai backend)")
    concurrency: int = option(16, at_least=1, help="requests in flight per server (openai)")
    max_retries: int = option(5, at_least=0, cli=False)
    trust_remote_code: bool = option(False, help="run the checkpoint's own modelling code")
    chunk_size: int | None = option(None, at_least=1, help="requests per backend call, stored as each finishes")

    def __post_init__(self) -> None:
        check(self)

    @classmethod
    def from_args(cls, ns: argparse.Namespace) -> BackendOptions:
        return cls(**_values(ns, cls))


@dataclass(frozen=True)
class RunConfig:
    suite: str = option(cli_default=lambda: "demo", help="suite name (suites/NAME.yaml) or path to a suite YAML")
    backend: str = option("hf", choices=_backend_names, help="the engine that runs the checkpoints")
    options: BackendOptions = field(default_factory=BackendOptions)
    store_dir: str = option(
        "baselines",
        flag="--store",
        cli_default=lambda: os.environ.get("REGRESS_STORE", "baselines"),
        help="record store folder",
    )
    limit: int | None = option(None, at_least=1, help="evaluate only the first N items of each task")
    tasks: str | None = option(
        None,
        help="comma-separated tasks (lm-eval's registered tasks or groups, or our own): a suite of them, "
        "instead of --suite",
    )
    data: str | None = option(
        None,
        help="data root for registered tasks: <namespace>__<name>/<config>/<split>.jsonl "
        "(else $REGRESS_DATA, else the suite's data:)",
    )
    # >0: a noise-floor rerun (its own store key; requests in reverse order, other batch size)
    noise_variant: int = option(0, at_least=0, cli=False)

    def __post_init__(self) -> None:
        check(self)

    @classmethod
    def from_args(cls, ns: argparse.Namespace) -> RunConfig:
        return cls(options=BackendOptions.from_args(ns), **_values(ns, cls))
