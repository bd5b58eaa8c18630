"""The top-level run, as a short list of named stage calls.

    suite -> evaluate(base) -> evaluate(candidate) -> pair -> task_table -> judge -> report

``run_comparison`` is what ``regress compare`` and ``make regress`` call; ``rejudge`` is
``regress gate``: the same last stages on stored items, with no model run.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd

from harness import detectors, probes
from harness.backends import hf_batching
from harness.compare import Comparison, add_drift, pair, task_table
from harness.config import RunConfig
from harness.errors import RegressError
from harness.gate import Policy, judge, load_policy_file, parse_policy
from harness.runner import RunResult, evaluate, preflight
from harness.store import check_writable
from harness.suites import Suite, load_suite


@dataclass(frozen=True)
class CompareRequest:
    base: str
    model: str
    config: RunConfig
    out: str | None = None
    policy_file: str | None = None
    noise_floor: bool = False


def build_policy(suite: Suite, policy_file: str | None) -> Policy:
    policy = parse_policy(suite.policy, where=f"policy of suite {suite.name}")
    if policy_file:
        policy = load_policy_file(policy_file, policy)
    return policy


def default_out(base: str, model: str, suite: str) -> Path:
    return Path("reports") / f"{Path(model).name}-vs-{Path(base).name}-{suite}"


def termination_row(base: RunResult, cand: RunResult) -> dict[str, Any] | None:
    """The termination probe as a gate row (rates only; the probe has no accuracy)."""
    if not base.termination or not cand.termination:
        return None
    b, c = probes.termination_stats(base.termination), probes.termination_stats(cand.termination)
    return {
        "name": "probe:termination",
        "probe": True,
        "n": b["n"],
        "n_generated": b["n"],
        "nonterm_rate_base": b["nonterm_rate"],
        "nonterm_rate_candidate": c["nonterm_rate"],
        "loop_rate_base": b["loop_rate"],
        "loop_rate_candidate": c["loop_rate"],
        "base": b,
        "candidate": c,
        "examples": [
            {"output": g.text[:2000], "finish": g.finish, "n_tokens": g.n_tokens}
            for g in cand.termination
            if g.finish == "length"
        ][:10],
    }


def config_check(base: RunResult, cand: RunResult) -> list[str]:
    out = []
    for label, r in (("base", base), ("candidate", cand)):
        if r.eot is not None:
            out += probes.config_findings(f"{label} {r.checkpoint.path}", r.eot)
    return out


def comparison_of(base: RunResult, cand: RunResult, suite: Suite, backend: str, policy: Policy) -> Comparison:
    items, warnings = pair(base.records, cand.records)
    items = add_drift(items, base.drift, cand.drift)
    tasks = task_table(items)
    term = termination_row(base, cand)
    gated = [*tasks, term] if term is not None else tasks
    verdict = judge(gated, policy)
    findings = config_check(base, cand)
    extras: dict[str, Any] = {"policy": policy, "config_check": findings, "detector": detectors.table_scores()}
    if term is not None:
        extras["probes"] = {"termination": term}
    return Comparison(
        base.checkpoint, cand.checkpoint, suite.name, suite.content_hash, backend, items, tasks, verdict,
        tuple(warnings) + tuple(findings), extras,
    )  # fmt: skip


def noise_floor(path: str, suite: Suite, cfg: RunConfig, first: RunResult) -> dict[str, Any]:
    """Evaluate the base a second time with the requests in reverse order (and, for ``hf``,
    whose batches regress forms, another batch size); the share of items whose output
    changes is the engine's noise floor. vLLM and servers batch as they schedule."""
    again_cfg = replace(cfg, noise_variant=1)
    sizes = None
    if cfg.backend == "hf":
        bs = hf_batching(cfg.options)[0]
        sizes = [bs, max(1, bs // 4 + 1)]
        again_cfg = replace(again_cfg, options=replace(cfg.options, batch_size=sizes[1]))
    again = evaluate(path, suite, again_cfg)
    a = {(r.task, r.item_id): r.output for r in first.records}
    b = {(r.task, r.item_id): r.output for r in again.records}
    changed = sum(a[k] != b.get(k) for k in a)
    return {
        "changed": changed,
        "n": len(a),
        "rate": changed / len(a) if a else 0.0,
        "batch_sizes": sizes,  # None: the engine's own batching
        "bitwise_repeatable": changed == 0,
    }


def with_noise_floor(policy: Policy, rate: float) -> Policy:
    return policy.override(noise_floor=rate)


def run_comparison(req: CompareRequest) -> tuple[Comparison, Path]:
    from harness.report import write_report

    suite = load_suite(req.config.suite)
    policy = build_policy(suite, req.policy_file)
    out = Path(req.out) if req.out else default_out(req.base, req.model, suite.name)
    check_writable(out, "output folder")
    preflight((req.base, req.model), suite, req.config, out)  # all bad input, before anything is written
    base = evaluate(req.base, suite, req.config)
    nf = noise_floor(req.base, suite, req.config, base) if req.noise_floor else None
    if nf is not None:
        policy = with_noise_floor(policy, nf["rate"])
    cand = evaluate(req.model, suite, req.config, reference=base.records)
    cmp = comparison_of(base, cand, suite, req.config.backend, policy)
    if nf is not None:
        cmp.extras["noise_floor"] = nf
        note = (
            f"noise floor: {nf['changed']} of {nf['n']} base outputs changed between two runs of the base "
            + (f"(batch sizes {nf['batch_sizes'][0]} and {nf['batch_sizes'][1]}, reversed order)" if nf["batch_sizes"]
               else "(requests in reversed order)")
            + ("; the engine is bitwise repeatable here, the floor is zero" if nf["bitwise_repeatable"] else
               f"; flips within {100 * nf['rate']:.2f}% of items are treated as noise")
        )  # fmt: skip
        cmp = replace(cmp, warnings=(*cmp.warnings, note))
    return cmp, write_report(cmp, out)


def rejudge(report_dir: str, policy_file: str | None) -> tuple[Comparison, Path]:
    """Re-judge a stored report's items under a (new) policy, without running a model."""
    import json

    from harness.report import write_report
    from harness.report.summary import EXTRA_KEYS
    from harness.types import Checkpoint

    d = Path(report_dir)
    try:
        summary: dict[str, Any] = json.loads((d / "summary.json").read_text())
        items = pd.read_parquet(d / "items.parquet")
        base, cand = Checkpoint(**summary["base"]), Checkpoint(**summary["candidate"])
        suite_name, suite_hash = summary["suite"]["name"], summary["suite"]["hash"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise RegressError(f"{report_dir} is not a regress report folder ({type(e).__name__}: {e})") from e
    if "policy" in summary:  # the policy the report was judged under, then --policy on top
        policy = parse_policy(summary["policy"], where=f"policy in {d / 'summary.json'}")
        policy = load_policy_file(policy_file, policy) if policy_file else policy
    else:
        try:
            suite = load_suite(suite_name)
            policy = build_policy(suite, policy_file)
        except RegressError:
            policy = load_policy_file(policy_file) if policy_file else Policy()
    tasks = task_table(items)
    term = (summary.get("probes") or {}).get("termination")  # gated too, as in comparison_of
    verdict = judge([*tasks, term] if term else tasks, policy)
    extras = {k: summary[k] for k in EXTRA_KEYS if k in summary}
    cmp = Comparison(
        base, cand, suite_name, suite_hash, summary.get("backend", "?"), items, tasks, verdict,
        tuple(summary.get("warnings", [])), {**extras, "policy": policy},
    )  # fmt: skip
    return cmp, write_report(cmp, d)
