"""The command line: ``regress run | compare | gate | baselines | trend | demo | tokens``, and ``--version``.

Thin by design: it parses arguments into one ``RunConfig``/``CompareRequest`` at the edge,
calls ``harness.pipeline``, prints where the results are, and maps outcomes to exit codes:
0 PASS (and WARN unless --strict), 1 regression, 2 error (one line, no traceback),
130 interrupted (finished items are kept; the same command resumes).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from harness import defaults
from harness.cli_args import (
    REAL_LIMIT,
    CompareArgs,
    DemoArgs,
    GateArgs,
    Judging,
    ListArgs,
    LogArgs,
    PruneArgs,
    RunArgs,
    ShowArgs,
    TokensArgs,
    TrendArgs,
)
from harness.config import BackendOptions, RunConfig, add_arguments, from_namespace
from harness.errors import RegressError
from harness.quiet import quiet_third_party
from harness.sft.rule import TokenRule
from harness.types import Comparison

if TYPE_CHECKING:
    from harness.pipeline import CompareRequest

EXIT_ERROR, EXIT_INTERRUPTED = 2, 130


def _env_defaults() -> None:
    # No hub is reachable on most machines that run a gate; never wait on one.
    if not defaults.online():
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")


def _add_run_args(p: argparse.ArgumentParser) -> None:
    # generated from the fields of RunConfig and BackendOptions (harness/config.py): one place per option
    add_arguments(p, RunConfig)
    add_arguments(p, BackendOptions)


def _run_config(a: argparse.Namespace) -> RunConfig:
    return RunConfig.from_args(a)  # checks every value: a RegressError names the flag


MAX_TERMINAL_WARNINGS = 10


def verdict_lines(cmp: Comparison, out: Path) -> list[str]:
    """The verdict block a CI log shows: the level, each rule that fired with its numbers,
    each config finding with its fix on a line of its own, the other warnings (at most
    ``MAX_TERMINAL_WARNINGS``; all of them are in summary.json), and the report's path."""
    v = cmp.verdict
    lines = [f"{v.level}: {cmp.candidate.path} vs {cmp.base.path} ({cmp.suite})"]
    lines += [f"  {r}" for r in v.reasons]
    from harness import causes  # pandas: loaded only once there is a comparison to explain

    why, remedies = causes.explain(cmp.items, causes.failing_units(v.results, v.level))
    lines += [f"  [why] {x}" for x in why] + [f"    {c}: {r}" for c, r in remedies.items()]
    for finding in cmp.config_check:
        what, sep, fix = finding.partition(" Fix: ")
        lines.append(f"  [config] {what}")
        if sep:
            lines.append(f"    fix: {fix}")
    others = [w for w in cmp.warnings if w not in cmp.config_check]
    lines += [f"  [warning] {w}" for w in others[:MAX_TERMINAL_WARNINGS]]
    if len(others) > MAX_TERMINAL_WARNINGS:
        lines.append(f"  ... and {len(others) - MAX_TERMINAL_WARNINGS} more warnings (summary.json)")
    lines.append(f"  report: {out / 'report.html'}")
    return lines


def _print_verdict(cmp: Comparison, out: Path) -> None:
    print("\n".join(verdict_lines(cmp, out)), flush=True)


def cmd_run(a: argparse.Namespace) -> int:
    from harness.pipeline import run_one

    res = run_one(a.model, _run_config(a), a.base)
    by_task: dict[str, list[float]] = {}
    for r in res.records:
        by_task.setdefault(r.task, []).append(r.score)
    for task, scores in by_task.items():
        print(f"{task:24s} n={len(scores):5d}  score={sum(scores) / len(scores):.3f}")
    print(f"records: {res.store_path}{' (reused)' if res.reused else ''}")
    return 0


def cmd_compare(a: argparse.Namespace) -> int:
    from harness.pipeline import CompareRequest, run_comparison

    models = tuple(a.model)
    base, base_log = _side(a.base, a.base_samples, "--base")
    model, model_log = _side(models[0] if models else None, a.model_samples, "--model")
    if base_log or model_log:  # an lm-eval output folder on one side or both (harness/lm_eval_logs.py)
        from harness import lm_eval_logs

        if a.noise_floor:
            raise RegressError("--noise-floor runs the base twice: give --base CKPT, not --base-samples")
        if len(models) > 1:
            raise RegressError("several --model are compared with a checkpoint base, not with --base-samples")
        log_req = lm_eval_logs.LogCompareRequest(
            base, model, base_log, model_log, _run_config(a), a.out, a.policy, a.tokenizer, a.allow_prompt_change
        )
        cmp, out = lm_eval_logs.compare(log_req)
        _print_verdict(cmp, out)
        return cmp.verdict.exit_code(a.strict)
    req = CompareRequest(base, model, _run_config(a), a.out, a.policy, a.noise_floor, a.allow_no_effect)
    if len(models) > 1:
        return _compare_many(req, list(models), a.strict)
    cmp, out = run_comparison(req)
    _print_verdict(cmp, out)
    return cmp.verdict.exit_code(a.strict)


def _side(ckpt: str | None, samples: str | None, flag: str) -> tuple[str, bool]:
    """A side of ``compare``: (path, whether it is an lm-eval output folder) from FLAG or FLAG-samples."""
    if (ckpt is None) == (samples is None):
        raise RegressError(f"give one of {flag} CKPT and {flag}-samples DIR (an lm_eval --log_samples output folder)")
    return (samples, True) if samples is not None else (str(ckpt), False)


def _compare_many(req: CompareRequest, models: list[str], strict: bool) -> int:
    from harness.candidates import run_many

    results, out = run_many(req, models)
    for cmp, folder in results:
        _print_verdict(cmp, folder)
    print(f"  index: {out / 'index.html'}")
    return max(cmp.verdict.exit_code(strict) for cmp, _ in results)


def cmd_baselines(a: argparse.Namespace) -> int:
    from harness import baselines

    if a.action == "list":
        print(baselines.format_list(a.store, verify=not a.no_verify))
    elif a.action == "show":
        print(baselines.format_show(a.store, a.ref))
    else:
        print(baselines.prune(a.store, stale=a.stale, incomplete=a.incomplete, older_than_days=a.older_than,
                              keys=tuple(a.key), everything=a.all, dry_run=a.dry_run))  # fmt: skip
    return 0


def cmd_gate(a: argparse.Namespace) -> int:
    from harness.pipeline import rejudge

    cmp, out = rejudge(a.report_dir, a.policy)
    _print_verdict(cmp, out)
    return cmp.verdict.exit_code(a.strict)


def cmd_demo(a: argparse.Namespace) -> int:
    paths, fine_tunes, tag = _build_demo(a)
    for name, p in paths.items():
        print(f"{name:16s} {p}")
    if not a.compare:
        return 0
    from harness.pipeline import compare_each

    cfg = _run_config(a)
    if a.real and cfg.suite == "demo":  # the demo world's tasks mean nothing to SmolLM2: its own suite
        cfg = replace(cfg, suite="real", limit=cfg.limit or REAL_LIMIT)
    out_root = Path(a.out_reports) if a.out_reports else Path(defaults.REPORTS_DIR)
    outs = [out_root / f"{tag}-{ft}" for ft in fine_tunes]
    worst, lines = 0, []
    for ft, (cmp, out) in zip(fine_tunes, compare_each(str(paths["base"]), [str(paths[ft]) for ft in fine_tunes],
                                                       cfg, outs, a.policy)):  # fmt: skip
        _print_verdict(cmp, out)
        lines.append(f"  {cmp.verdict.level:4s}  {ft:16s} {out / 'report.html'}")
        worst = max(worst, cmp.verdict.exit_code(a.strict))
    print(f"{tag} verdicts (base vs each fine-tune):")
    print("\n".join(lines))
    return worst


def _build_demo(a: argparse.Namespace) -> tuple[dict[str, Path], tuple[str, ...], str]:
    """Build (or reuse) the demo (or with --real the real demo): its folders, fine-tunes, report tag."""
    if a.real:
        from harness.demo import real

        return real.build_real(Path(a.out) / "real"), real.FINE_TUNES, "real"
    from harness.demo.build import FINE_TUNES, build_demo

    return build_demo(Path(a.out)), FINE_TUNES, "demo"


def cmd_trend(a: argparse.Namespace) -> int:
    from harness import lm_eval_logs
    from harness.pipeline import run_trend
    from harness.trend import last_passing

    out = Path(a.out) if a.out else Path(defaults.REPORTS_DIR) / f"trend-{Path(a.base).name}"
    if any(lm_eval_logs.is_log_folder(p) for p in (a.base, *a.checkpoints)):  # lm-eval output folders among them
        points = lm_eval_logs.trend(a.base, a.checkpoints, _run_config(a), out, a.policy, a.tokenizer)
    else:
        points = run_trend(a.base, a.checkpoints, _run_config(a), out, a.policy, a.allow_no_effect)
    for p in points:
        print(f"  step {p.step:>8}  {p.verdict:4s}  {p.path}")
    best = last_passing(points)
    print(f"last checkpoint that still passes: {best.path if best else 'none'}")
    print(f"  report: {out / 'trend.html'}")
    # a gate on the run's newest checkpoint: 1 when it fails, as `compare` would say
    return 1 if points and points[-1].verdict == "FAIL" else 0


def cmd_tokens(a: argparse.Namespace) -> int:
    from harness import sft

    args, rule = from_namespace(TokensArgs, a), from_namespace(sft.TokenRule, a)  # every value checked first
    out = Path(args.out) if args.out else Path(defaults.REPORTS_DIR) / f"tokens-{Path(args.data).stem}"
    audit = sft.run(args.base, args.data, out, rule, args.batch_size)
    s = audit.summary()
    print(f"{s['examples']} examples, {s['assistant_tokens']} assistant tokens, {s['key_tokens']} key "
          f"({s['key_share']:.1%}): the base does not already produce them")  # fmt: skip
    print(f"masked.jsonl: {s['kept']} examples kept; dropped {s['outliers_dropped']} outlier prompt(s) and "
          f"{s['no_key_dropped']} without a key token")  # fmt: skip
    print(f"  audit: {out / 'audit.md'}")
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse whose errors (a bad value, a missing argument) are a ``RegressError``: one line, exit 2,
    no usage dump, as every other error. Subcommand parsers are made of this class too."""

    def error(self, message: str) -> NoReturn:
        raise RegressError(" ".join(message.split()))


Subparsers = argparse._SubParsersAction  # type: ignore[type-arg]


def _run_parser(sub: Subparsers) -> None:
    r = sub.add_parser("run", help="evaluate one checkpoint on a suite and store its records")
    add_arguments(r, RunArgs)
    _add_run_args(r)
    r.set_defaults(fn=cmd_run)


def _compare_parser(sub: Subparsers) -> None:
    c = sub.add_parser("compare", help="compare a candidate with its base; exit 0 pass, 1 regression, 2 error")
    add_arguments(c, CompareArgs)
    add_arguments(c, LogArgs)
    add_arguments(c, Judging)
    _add_run_args(c)
    c.set_defaults(fn=cmd_compare)


def _gate_parser(sub: Subparsers) -> None:
    g = sub.add_parser("gate", help="re-judge a stored report under a policy, without running a model")
    add_arguments(g, GateArgs)
    add_arguments(g, Judging)
    g.set_defaults(fn=cmd_gate)


def _baselines_parser(sub: Subparsers) -> None:
    b = sub.add_parser("baselines", help="list, show or prune the stored records (the baselines/ store)")
    acts = b.add_subparsers(dest="action", required=True)
    helps = {"list": "one line per stored run, with its status and staleness", "show": "one stored run in full",
             "prune": "remove stored runs (never one in use)"}  # fmt: skip
    for action, args in (("list", ListArgs), ("show", ShowArgs), ("prune", PruneArgs)):
        act = acts.add_parser(action, help=helps[action])
        add_arguments(act, RunConfig, only=("store_dir",))
        add_arguments(act, args)
    b.set_defaults(fn=cmd_baselines)


def _trend_parser(sub: Subparsers) -> None:
    t = sub.add_parser("trend", help="checkpoints of one run against the base, by step; exit 1 if the newest fails")
    add_arguments(t, TrendArgs)
    add_arguments(t, Judging, only=("policy",))  # the exit code is the newest checkpoint's FAIL, WARN or not
    _add_run_args(t)
    t.set_defaults(fn=cmd_trend)


def _watch_parser(sub: Subparsers) -> None:
    from harness.watch import add_parser  # regress watch: its options and command in harness/watch.py

    add_parser(sub, _add_run_args)


def _demo_parser(sub: Subparsers) -> None:
    d = sub.add_parser("demo", help="build (or reuse) the demo checkpoints; --compare runs the demo regression")
    add_arguments(d, DemoArgs)
    add_arguments(d, Judging)
    _add_run_args(d)
    d.set_defaults(fn=cmd_demo)


def _tokens_parser(sub: Subparsers) -> None:
    k = sub.add_parser("tokens", help="score a chat SFT file's assistant tokens under the base; write a key-token mask")
    add_arguments(k, TokensArgs)
    add_arguments(k, TokenRule)
    k.set_defaults(fn=cmd_tokens)


class _Version(argparse.Action):
    """``--version``: regress's, lm-eval's, the engine's and torch's versions, then exit 0 (as -h)."""

    def __init__(self, option_strings: list[str], dest: str, **kw: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, help="print the versions of regress and its engines; exit")

    def __call__(self, parser: argparse.ArgumentParser, *_: Any) -> None:
        from harness.versions import version_lines

        print("\n".join(version_lines()))
        parser.exit(0)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="regress", description="Forgetting-regression gate for fine-tuned checkpoints")
    p.add_argument("-v", "--verbose", action="store_true", help="let the libraries' and engines' output through")
    p.add_argument("--version", action=_Version)
    sub = p.add_subparsers(dest="cmd", required=True)
    for add in (_run_parser, _compare_parser, _gate_parser, _baselines_parser, _trend_parser, _watch_parser,
                _demo_parser, _tokens_parser):  # fmt: skip
        add(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    _env_defaults()
    try:
        args = build_parser().parse_args(argv)
        logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
        quiet_third_party(args.verbose)
        if "backend" in vars(args):  # a command that runs checkpoints: check every option before it reads anything
            _run_config(args)
        return int(args.fn(args))
    except RegressError as e:
        print(f"regress: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("regress: interrupted; finished items are stored, run the same command again to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:  # noqa: BLE001 - the edge: one line, not a traceback
        if defaults.debug():
            raise
        print(
            f"regress: internal error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''} "
            f"(set {defaults.DEBUG_ENV}=1 for a traceback)",
            file=sys.stderr,
        )
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
