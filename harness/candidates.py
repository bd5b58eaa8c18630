"""``regress compare --base B --model M1 --model M2 ...``: many candidates, one base, one engine.

Every checkpoint is checked before anything is written (``pipeline.preflight``); the base
is evaluated once (or its records reused from the store), then each candidate in the same
engine where it is an adapter of the base (``harness.engines``). Every candidate is
checked for having changed anything (``adapters.check_effect``) before any report is
written; then one report folder per candidate under ``OUT/`` (each written whole) and,
last, the index ranking them (``harness.report.index``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from harness import adapters, engines
from harness.gate import override
from harness.pipeline import CompareRequest, build_policy, comparison_of, knowledge_probe, noise_floor, preflight
from harness.report import write_report
from harness.report.index import row_of, write_index
from harness.runner import evaluate
from harness.suites import suite_for
from harness.types import Comparison


def labels(models: Sequence[str]) -> list[str]:
    """Each candidate's report folder: its folder (or hub id's) name, made unique."""
    out: list[str] = []
    for m in models:
        name = re.sub(r"[^\w.@-]+", "_", Path(m.rstrip("/")).name or m) or "candidate"
        label, n = name, 2
        while label in out:
            label, n = f"{name}-{n}", n + 1
        out.append(label)
    return out


def default_out(base: str, suite: str) -> Path:
    return Path("reports") / f"candidates-vs-{Path(base).name}-{suite}"


def run_many(req: CompareRequest, models: Sequence[str]) -> tuple[list[tuple[Comparison, Path]], Path]:
    """Each candidate of ``models`` against ``req.base``: (comparison, report folder) each,
    in the order given, and the folder holding them and the index."""
    suite = suite_for(req.config)
    policy = build_policy(suite, req.policy_file)
    out = Path(req.out) if req.out else default_out(req.base, suite.name)
    base_ck, *cand_cks = preflight([req.base, *models], suite, req.config, out)
    with engines.shared([base_ck, *cand_cks]):
        base = evaluate(base_ck, suite, req.config)
        nf = noise_floor(base_ck, suite, req.config, base) if req.noise_floor else None
        runs = [evaluate(ck, suite, req.config, reference=base.records, drafts_from=base.store_path) for ck in cand_cks]
        for run in runs:
            adapters.check_effect(base, run, req.allow_no_effect)
        if nf is not None:
            policy = override(policy, noise_floor=nf.rate)
        cmps = [
            comparison_of(
                base, run, suite, req.config.backend, policy, nf, knowledge_probe(base_ck, ck, suite, req.config)
            )
            for run, ck in zip(runs, cand_cks)
        ]
    names = labels(models)
    for name, cmp in zip(names, cmps):
        write_report(cmp, out / name)  # each folder whole or not at all; the index last
    write_index(out, base.checkpoint.path, suite.name, [row_of(n, c) for n, c in zip(names, cmps)])
    return [(c, out / n) for c, n in zip(cmps, names)], out
