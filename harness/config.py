"""One validated configuration object per run, built at the CLI edge and passed down whole.

``RunConfig`` names the suite, backend, options and output places; ``BackendOptions`` (from
``harness.backends``, where each backend declares its own) holds what the backends take
(unset fields mean the backend's own default).

Each option is declared once, as a field with an ``option(...)`` spec (``harness.options``):
its flag, help, allowed values. From that one declaration ``add_arguments`` makes the
argparse flags, ``from_args`` builds the object from the parsed namespace, and
``__post_init__`` checks the values, so a config built in code is checked as one built from
the command line. Adding an option is one field. An invalid value is a one-line
``RegressError`` that names the option by its flag (``--batch-size must be at least 1 (got 0)``).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

from harness import defaults
from harness.backends import BACKENDS, BackendOptions
from harness.options import Spec, add_arguments, check, flag_of, from_namespace, option, problem, values

__all__ = [
    "BackendOptions",
    "RunConfig",
    "Spec",
    "add_arguments",
    "check",
    "flag_of",
    "from_namespace",
    "option",
    "problem",
]


@dataclass(frozen=True)
class RunConfig:
    suite: str = option(
        cli_default=lambda: defaults.SUITE, help="suite name (suites/NAME.yaml) or path to a suite YAML"
    )
    backend: str = option(defaults.BACKEND, choices=tuple(BACKENDS), help="the engine that runs the checkpoints")
    options: BackendOptions = field(default_factory=BackendOptions)
    store_dir: str = option(
        defaults.STORE_DIR, flag="--store", cli_default=defaults.store_dir, help="record store folder"
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
        f"(else ${defaults.DATA_ENV}, else the suite's data:)",
    )
    no_drafts: bool = option(
        False, help="generate every answer of a candidate in full, never from the base's stored answers as drafts"
    )
    verify_drafts: bool = option(
        False, help="draft from the base's answers and generate everything as well: count the drafts that differ"
    )
    knowledge_probe: str = option(
        "lost",
        choices=("lost", "all", "off"),
        help="score the gold answer under both checkpoints for the lost items (default), every item the "
        "base got right, or none (harness/knowledge.py)",
    )
    # >0: a noise-floor rerun (its own store key; requests in reverse order, other batch size)
    noise_variant: int = option(0, at_least=0, cli=False)

    def __post_init__(self) -> None:
        check(self)

    @property
    def draft_mode(self) -> str:
        """How a candidate uses the base's stored answers (``harness.drafts``): on, verify, off."""
        return "verify" if self.verify_drafts else "off" if self.no_drafts else "on"

    @classmethod
    def from_args(cls, ns: argparse.Namespace) -> RunConfig:
        return cls(options=BackendOptions.from_args(ns), **values(ns, cls))
