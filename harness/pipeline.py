"""The one orchestrator: every command that runs checkpoints is a short list of stage calls.

    preflight -> evaluate(base) -> evaluate(candidate) -> pair -> tables -> judge -> report

* ``run_one`` is ``regress run``: one checkpoint's records.
* ``run_comparison`` is ``regress compare`` (and ``make regress MODEL=...``).
* ``compare_each`` is ``regress demo --compare`` (and ``make regress`` without MODEL): the
  base against each fine-tune.
* ``run_trend`` is ``regress trend``: the base once, then each checkpoint of a training run
  (``harness.trend`` orders them by step and writes the trend report).
* ``rejudge`` is ``regress gate``: the last stages on a stored report, no model run.

``preflight`` checks every input of a run before anything is written (the backend's name,
each checkpoint, the tokenizers' agreement, the store and report folders) and reads each
checkpoint once (``LoadedCheckpoint``: fingerprint, tokenizer, end-of-turn setup), which
every later stage is handed.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from harness import adapters, defaults, detectors, engines, knowledge, probes
from harness import checkpoint as ckpt
from harness.backends import BACKENDS, rerun_options
from harness.causes import add_causes
from harness.compare import add_drift, add_flags, pair, probe_row, tables
from harness.config import RunConfig
from harness.errors import BackendError, RegressError
from harness.gate import judge, load_policy_file, override, parse_policy
from harness.registry import Policy
from harness.runner import evaluate, score_stored
from harness.store import check_writable
from harness.suites import load_suite, suite_for
from harness.trend import TrendPoint, points_of, write_trend
from harness.types import Comparison, LoadedCheckpoint, NoiseFloor, RunResult, Suite

if TYPE_CHECKING:
    import pandas as pd

    from harness.report.summary import StoredReport

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CompareRequest:
    """What ``regress compare`` asks for: two checkpoints, the run's settings, where to write."""

    base: str
    model: str
    config: RunConfig
    out: str | None = None
    policy_file: str | None = None
    noise_floor: bool = False
    allow_no_effect: bool = False  # a candidate whose files differ but whose answers do not: accepted


# -- preflight ------------------------------------------------------------------------


def preflight(paths: Sequence[str], suite: Suite, cfg: RunConfig, out: Path | None = None) -> list[LoadedCheckpoint]:
    """Check everything a run needs before any store or report folder is made, and read
    each checkpoint once.

    The backend's name; every checkpoint folder (all of them before any is read, so a
    missing candidate is said at once); each one's tokenizer and, if the suite needs one,
    chat template; that every other checkpoint's vocabulary matches the first's (the
    base; a warning when only their tokenizer files differ); the store and report folders.
    """
    if cfg.backend not in BACKENDS:
        raise BackendError(f"unknown backend {cfg.backend!r}; choose one of: {', '.join(BACKENDS)}")
    first = adapters.locate(paths[0])  # folders, adapters (of the first: the base), hub ids
    sources = [first, *(adapters.locate(p, base=first) for p in paths[1:])]
    loaded = []
    for path, src in zip(paths, sources):
        tok = ckpt.load_tokenizer(src.tokenizer_path, cfg.options.trust_remote_code)
        if suite.chat_template and not getattr(tok, "chat_template", None):
            raise RegressError(f"checkpoint {path} has no chat template, which suite {suite.name!r} needs")
        loaded.append(tok)
    for tok, src in zip(loaded[1:], sources[1:]):
        warning = ckpt.compare_tokenizers(loaded[0], tok, sources[0].tokenizer_path, src.tokenizer_path)
        if warning:
            log.warning("regress: warning: %s", warning)
    check_writable(Path(cfg.store_dir), "record store")
    if out is not None:
        check_writable(out, "output folder")
    return [adapters.read(src, tok) for src, tok in zip(sources, loaded)]


def build_policy(suite: Suite, policy_file: str | None) -> Policy:
    policy = parse_policy(suite.policy, where=f"policy of suite {suite.name}")
    if policy_file:
        policy = load_policy_file(policy_file, policy)
    return policy


def default_out(base: str, model: str, suite: str) -> Path:
    return Path(defaults.REPORTS_DIR) / f"{Path(model).name}-vs-{Path(base).name}-{suite}"


# -- the commands ---------------------------------------------------------------------


def run_one(path: str, cfg: RunConfig, base: str | None = None) -> RunResult:
    """``regress run``: one checkpoint's records on the suite (stored, or computed and stored);
    ``base``: the model a PEFT adapter is applied to (else the one its config names)."""
    suite = suite_for(cfg)
    loaded = preflight([base, path] if base else [path], suite, cfg)[-1]
    return evaluate(loaded, suite, cfg)


def run_comparison(req: CompareRequest) -> tuple[Comparison, Path]:
    """``regress compare``: base and candidate on the suite, compared, judged and reported."""
    from harness.report import write_report

    suite = suite_for(req.config)
    policy = build_policy(suite, req.policy_file)
    out = Path(req.out) if req.out else default_out(req.base, req.model, suite.name)
    base_ck, cand_ck = preflight((req.base, req.model), suite, req.config, out)  # all bad input, before any write
    with engines.shared((base_ck, cand_ck)):  # an adapter of the base runs in the base's engine
        base = evaluate(base_ck, suite, req.config)
        nf = noise_floor(base_ck, suite, req.config, base) if req.noise_floor else None
        cand = evaluate(cand_ck, suite, req.config, reference=base.records, drafts_from=base.store_path)
        adapters.check_effect(base, cand, req.allow_no_effect)
        if nf is not None:
            policy = override(policy, noise_floor=nf.rate)
        probe = knowledge_probe(base_ck, cand_ck, suite, req.config)  # scored through the same engines
        cmp = comparison_of(base, cand, suite, req.config.backend, policy, nf, probe)
    return cmp, write_report(cmp, out)


def run_trend(
    base: str,
    checkpoints: Sequence[str],
    cfg: RunConfig,
    out: Path,
    policy_file: str | None,
    allow_no_effect: bool = False,
) -> list[TrendPoint]:
    """``regress trend``: each checkpoint against the base (evaluated once; every
    checkpoint checked before any is run), ordered by step, written as trend.html/json."""
    suite = suite_for(cfg)
    policy = build_policy(suite, policy_file)
    base_ck, *cands = preflight([base, *checkpoints], suite, cfg, out)
    comparisons = list(against_base(base_ck, cands, suite, cfg, policy, allow_no_effect))
    points, by_step = points_of(list(checkpoints), comparisons)
    write_trend(base, points, out, "step" if by_step else "position given")
    return points


def compare_each(
    base: str, candidates: Sequence[str], cfg: RunConfig, outs: Sequence[Path], policy_file: str | None
) -> Iterator[tuple[Comparison, Path]]:
    """``regress demo --compare``: the base against each candidate, reported into the matching
    folder of ``outs``; every checkpoint and folder checked before any is run, the base
    evaluated once; each comparison yielded as soon as it is judged and written."""
    from harness.report import write_report

    suite = suite_for(cfg)
    policy = build_policy(suite, policy_file)
    for out in outs:
        check_writable(out, "output folder")
    base_ck, *cands = preflight([base, *candidates], suite, cfg)
    for cmp, out in zip(against_base(base_ck, cands, suite, cfg, policy), outs):
        yield cmp, write_report(cmp, out)


def rejudge(report_dir: str, policy_file: str | None) -> tuple[Comparison, Path]:
    """``regress gate``: re-judge a stored report's items under a (new) policy, no model run."""
    from harness.report import write_report
    from harness.report.summary import load_comparison

    d = Path(report_dir)
    stored = load_comparison(d)
    old = stored.comparison
    policy = _stored_policy(stored, policy_file)
    items = add_flags(old.items)  # a detector registered since the report was written
    items = add_causes(items)  # from the stored outputs and probe columns (a report made before causes, too)
    tasks, groups, overall = tables(items)  # groups from the items' group column
    probes = (old.termination,) if old.termination else ()
    verdict = judge(tasks, policy, probes, groups, old.base.fingerprint == old.candidate.fingerprint)
    cmp = replace(old, items=items, tasks=tasks, overall=overall, verdict=verdict, policy=policy, groups=groups)
    return cmp, write_report(cmp, d)


# -- stages ---------------------------------------------------------------------------


def knowledge_probe(
    base: LoadedCheckpoint, cand: LoadedCheckpoint, suite: Suite, cfg: RunConfig
) -> Callable[[pd.DataFrame], pd.DataFrame] | None:
    """The knowledge probe over an item table, each side scored through its run's store
    (None: ``--knowledge-probe off``)."""
    if cfg.knowledge_probe == "off":
        return None

    def run(items: pd.DataFrame) -> pd.DataFrame:
        score_base = functools.partial(score_stored, base, suite, cfg)
        score_cand = functools.partial(score_stored, cand, suite, cfg)
        return knowledge.probe(items, score_base, score_cand, cfg.knowledge_probe == "all")

    return run


def comparison_of(
    base: RunResult,
    cand: RunResult,
    suite: Suite,
    backend: str,
    policy: Policy,
    nf: NoiseFloor | None = None,
    probe: Callable[[pd.DataFrame], pd.DataFrame] | None = None,
) -> Comparison:
    """Pair the two runs item by item, measure, run the detectors, find each loss's cause and judge."""
    items, warnings = pair(base.records, cand.records, suite)
    items = add_drift(items, base.drift, cand.drift)
    items = add_causes(probe(items) if probe is not None else items)
    tasks, groups, overall = tables(items)
    term = probe_row(base.termination, cand.termination)
    same_files = base.checkpoint.fingerprint == cand.checkpoint.fingerprint
    verdict = judge(tasks, policy, (term,) if term else (), groups, same_files)
    findings = tuple(config_check(base, cand))
    notes: tuple[str, ...] = (nf.note(),) if nf is not None else ()
    # a registered task read from a local copy that is not the original (HellaSwag: approximate; TriviaQA: subset)
    notes += tuple(dict.fromkeys(f"{t.group or t.name}: local data: {t.fidelity}" for t in suite.tasks if t.fidelity))
    notes += adapters.notes(base.checkpoint, cand.checkpoint, backend)
    return Comparison(
        base=base.checkpoint, candidate=cand.checkpoint, suite=suite.name, suite_hash=suite.content_hash,
        backend=backend, items=items, tasks=tasks, overall=overall, verdict=verdict, policy=policy,
        warnings=(*warnings, *findings, *notes), config_check=findings, termination=term, noise_floor=nf,
        detector=detectors.table_scores(), groups=groups, drafting=cand.drafting,
    )  # fmt: skip


def against_base(
    base_ck: LoadedCheckpoint,
    cands: Sequence[LoadedCheckpoint],
    suite: Suite,
    cfg: RunConfig,
    policy: Policy,
    allow_no_effect: bool = False,
) -> Iterator[Comparison]:
    """The base evaluated once, then each candidate evaluated and compared with it, in turn
    (adapters of the base in the base's engine; a candidate that changed nothing refused)."""
    with engines.shared([base_ck, *cands]):
        base = evaluate(base_ck, suite, cfg)
        for ck in cands:
            cand = evaluate(ck, suite, cfg, reference=base.records, drafts_from=base.store_path)
            adapters.check_effect(base, cand, allow_no_effect)
            yield comparison_of(base, cand, suite, cfg.backend, policy, probe=knowledge_probe(base_ck, ck, suite, cfg))


def config_check(base: RunResult, cand: RunResult) -> list[str]:
    out = []
    for label, r in (("base", base), ("candidate", cand)):
        if r.eot is not None:
            out += probes.config_findings(f"{label} {r.checkpoint.path}", r.eot)
    return out


def noise_floor(base_ck: LoadedCheckpoint, suite: Suite, cfg: RunConfig, first: RunResult) -> NoiseFloor:
    """Evaluate the base a second time with the requests in reverse order (and, where
    regress forms the batches, another batch size); the share of items whose output
    changes is the engine's noise floor."""
    options, sizes = rerun_options(cfg.backend, cfg.options)
    again = evaluate(base_ck, suite, replace(cfg, options=options, noise_variant=1))
    a = {(r.task, r.item_id): r.output for r in first.records}
    b = {(r.task, r.item_id): r.output for r in again.records}
    changed = sum(a[k] != b.get(k) for k in a)
    return NoiseFloor(changed, len(a), changed / len(a) if a else 0.0, sizes, changed == 0)


def _stored_policy(stored: StoredReport, policy_file: str | None) -> Policy:
    """The policy a report was judged under, then ``--policy`` on top; for a report that
    does not record one, its suite's, else the defaults."""
    if stored.policy_stored:
        policy = stored.comparison.policy
        return load_policy_file(policy_file, policy) if policy_file else policy
    try:
        return build_policy(load_suite(stored.comparison.suite), policy_file)
    except RegressError:
        return load_policy_file(policy_file) if policy_file else Policy()
