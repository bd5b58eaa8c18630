"""The top-level run, as a short list of named stage calls.

    suite -> evaluate(base) -> evaluate(candidate) -> pair -> task_table -> judge -> report

``run_comparison`` is what ``regress compare`` and ``make regress`` call; ``rejudge`` is
``regress gate``: the same last stages on stored items, with no model run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from harness import checkpoint as ckpt
from harness.compare import Comparison, pair, task_table
from harness.config import RunConfig
from harness.errors import RegressError
from harness.gate import Policy, judge, load_policy_file, parse_policy
from harness.runner import RunResult, evaluate
from harness.suites import Suite, load_suite


@dataclass(frozen=True)
class CompareRequest:
    base: str
    model: str
    config: RunConfig
    out: str | None = None
    policy_file: str | None = None


def build_policy(suite: Suite, policy_file: str | None) -> Policy:
    policy = parse_policy(suite.policy, where=f"policy of suite {suite.name}")
    if policy_file:
        policy = load_policy_file(policy_file, policy)
    return policy


def default_out(base: str, model: str, suite: str) -> Path:
    return Path("reports") / f"{Path(model).name}-vs-{Path(base).name}-{suite}"


def check_writable(out: Path) -> None:
    """Fail before any model runs if the report folder cannot be written."""
    parent = out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    import os

    if not os.access(parent, os.W_OK):
        raise RegressError(f"output folder {out} is not writable")


def comparison_of(base: RunResult, cand: RunResult, suite: Suite, backend: str, policy: Policy) -> Comparison:
    items, warnings = pair(base.records, cand.records)
    tasks = task_table(items)
    verdict = judge(tasks, policy)
    return Comparison(
        base.checkpoint,
        cand.checkpoint,
        suite.name,
        suite.content_hash,
        backend,
        items,
        tasks,
        verdict,
        tuple(warnings),
        {"policy": policy},
    )


def run_comparison(req: CompareRequest) -> tuple[Comparison, Path]:
    from harness.report import write_report

    suite = load_suite(req.config.suite)
    policy = build_policy(suite, req.policy_file)
    for p in (req.base, req.model):
        ckpt.validate(p)
    out = Path(req.out) if req.out else default_out(req.base, req.model, suite.name)
    check_writable(out)
    base = evaluate(req.base, suite, req.config)
    cand = evaluate(req.model, suite, req.config)
    cmp = comparison_of(base, cand, suite, req.config.backend, policy)
    return cmp, write_report(cmp, out)


def rejudge(report_dir: str, policy_file: str | None) -> tuple[Comparison, Path]:
    """Re-judge a stored report's items under a (new) policy, without running a model."""
    import json

    from harness.report import write_report
    from harness.types import Checkpoint

    d = Path(report_dir)
    try:
        summary: dict[str, Any] = json.loads((d / "summary.json").read_text())
        items = pd.read_parquet(d / "items.parquet")
    except (OSError, ValueError) as e:
        raise RegressError(f"{report_dir} is not a regress report folder ({e})") from e
    try:
        suite = load_suite(summary["suite"]["name"])
        policy = build_policy(suite, policy_file)
    except RegressError:
        policy = load_policy_file(policy_file) if policy_file else Policy()
    tasks = task_table(items)
    verdict = judge(tasks, policy)
    cmp = Comparison(
        Checkpoint(**summary["base"]), Checkpoint(**summary["candidate"]), summary["suite"]["name"],
        summary["suite"]["hash"], summary.get("backend", "?"), items, tasks, verdict, tuple(summary.get("warnings", [])),
        {"policy": policy},
    )  # fmt: skip
    return cmp, write_report(cmp, d)
