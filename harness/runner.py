"""Run one checkpoint over a suite: lm-eval drives, the backend answers, the store keeps.

``evaluate(loaded_checkpoint, suite, config)`` returns the checkpoint's per-item ``Record``s
(``pipeline`` checks and reads the checkpoint first, once).
When the store already holds complete records under the same key (same checkpoint
content, suite content, backend settings, record format), they are returned with no
engine started and no inference call made.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from harness import engines, probes
from harness.config import RunConfig
from harness.drafts import load_base
from harness.errors import RegressError, SuiteError
from harness.lm_adapter import RegressLM, Request
from harness.store import RunStore, store_folder, store_meta
from harness.types import (
    DriftValues,
    Generation,
    GenRequest,
    LoadedCheckpoint,
    Loglik,
    LoglikRequest,
    Messages,
    Record,
    RunResult,
    Suite,
    TaskSpec,
)

if TYPE_CHECKING:
    # one (item, filter) as lm-eval's log_samples gives it: doc, target, resps, filtered_resps,
    # filter, metrics and each metric's value (lm-eval's own type of its samples)
    from lm_eval.result_schema import SampleResult

log = logging.getLogger(__name__)


def evaluate(
    ck: LoadedCheckpoint,
    suite: Suite,
    cfg: RunConfig,
    reference: Sequence[Record] | None = None,
    drafts_from: str | None = None,
) -> RunResult:
    """Records of checkpoint ``ck`` on ``suite`` (stored, or computed and stored), plus its probes.

    ``reference`` is the base's records when ``ck`` is a candidate: the drift probes
    score the base's answers under this checkpoint. Without it they score its own.
    The engine starts only when a request is not in the store. ``drafts_from``: the base
    run's store folder, whose answers are this candidate's drafts (``harness.drafts``).
    """
    meta = store_meta(ck.path, ck.fingerprint, suite, cfg, ck.files)
    tokenizer = ck.tokenizer

    def chat(messages: Messages, add_generation_prompt: bool) -> str:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)

    with RunStore.open(store_folder(cfg.store_dir, meta), meta) as store:
        lm = RegressLM(
            lambda: engines.load(cfg.backend, ck, cfg.options), store, chat, ck.path,
            chunk_size=cfg.options.chunk_size, label=Path(ck.path).name,
        )  # fmt: skip
        lm.reverse = bool(cfg.noise_variant)
        reused = store.complete
        if (
            drafts_from
            and cfg.draft_mode != "off"
            and not reused
            and Path(drafts_from).resolve() != store.path.resolve()
        ):
            lm.drafts, lm.draft_mode = load_base(drafts_from), cfg.draft_mode  # a stored run drafts nothing
        try:
            if reused:
                records = store.load_records()
            else:
                samples = run_lm_eval(lm, suite, cfg)
                records = [r for t in suite.tasks for r in records_of(t, samples.get(t.name, []), lm)]
            ref = reference if reference is not None else records
            drift, term = run_probes(lm, suite, ref, ck.eot_texts, chat)
            if not reused:
                store.write_records(records)
        finally:
            lm.close()
        log.info(
            "%s: %d requests answered by the backend (%d calls), %d from the store",
            store.path.name, lm.backend_requests, lm.backend_calls, lm.stored_requests,
        )  # fmt: skip
        return RunResult(
            ck.checkpoint, tuple(records), str(store.path), reused, lm.backend_calls, drift, term, ck.eot,
            backend_requests=lm.backend_requests, drafting=lm.draft_counts if lm.draft_mode != "off" else None,
        )  # fmt: skip


def score_stored(ck: LoadedCheckpoint, suite: Suite, cfg: RunConfig, reqs: Sequence[LoglikRequest]) -> list[Loglik]:
    """Log-likelihoods of ``reqs`` under checkpoint ``ck``, through its run's store (the
    knowledge probe, after both runs): the engine starts only for what the store lacks."""
    meta = store_meta(ck.path, ck.fingerprint, suite, cfg, ck.files)
    with RunStore.open(store_folder(cfg.store_dir, meta), meta) as store:
        lm = RegressLM(
            lambda: engines.load(cfg.backend, ck, cfg.options), store, lambda m, g: "", ck.path,
            chunk_size=cfg.options.chunk_size, label=Path(ck.path).name,
        )  # fmt: skip
        try:
            return lm.score(reqs)
        finally:
            lm.close()


def run_probes(
    lm: RegressLM, suite: Suite, reference: Sequence[Record], eot_texts: Sequence[str], chat: Any
) -> tuple[DriftValues, tuple[Generation, ...]]:
    """The suite's probes through the same store-backed model: drift, then termination."""
    drift: DriftValues = {}
    if suite.probes.get("drift", True) and eot_texts:
        answers = lm.score(probes.drift_requests(reference, eot_texts))
        drift = probes.drift_values(reference, eot_texts, answers)
    term: tuple[Generation, ...] = ()
    spec = suite.probes.get("termination")
    if spec:
        probe = probes.load_termination_probe(spec, Path(suite.path).parent)
        term = tuple(lm.generate(probes.termination_requests(probe, chat)))
    return drift, term


def seed_scorers() -> None:
    """Scorers that draw at random give the same text the same score in every run. IFEval's
    language checks (``english_lowercase``, ``response_language``...) call ``langdetect``, which
    draws afresh on every call unless seeded: a short answer ("tw") then passed in one run
    and failed in the next, so byte-identical base and candidate answers could flip. lm-eval
    leaves it unseeded; regress seeds it with 0."""
    try:
        from langdetect import DetectorFactory
    except ImportError:  # no task here needs it (check_dependencies says so where one does)
        return
    DetectorFactory.seed = 0


def quick_rouge() -> None:
    """lm-eval's TruthfulQA generation scores an answer against each reference alone through
    rouge-score's ``BootstrapAggregator``: 1,000 bootstrap resamples of ONE score, whose mean,
    median and percentiles are that score. That was about half a second an item on a CPU, a
    fifth of a small model's whole comparison. An aggregator holding one score of each kind now
    returns it at once, the same floats bit for bit and of the same types
    (``tests/test_scorers.py``: on real TruthfulQA items, through the function lm-eval calls);
    with more than one score it bootstraps as before. Patched on the class, because lm-eval
    loads each task's ``utils.py`` as a module of its own."""
    try:
        import numpy as np
        from rouge_score import scoring
    except ImportError:  # no ROUGE task here (lm-eval's check_dependencies says so where one needs it)
        return
    cls = scoring.BootstrapAggregator
    slow = cls.aggregate
    if getattr(slow, "regress_quick", False) or not isinstance(getattr(cls(), "_scores", None), dict):
        return  # done already, or an aggregator not shaped as the one this was checked against

    def aggregate(self: Any) -> dict[str, Any]:
        scores = self._scores
        if not scores or any(len(v) != 1 for v in scores.values()):
            return slow(self)
        out = {}
        for kind, (score,) in scores.items():
            one = score.__class__(*np.asarray(score, dtype=np.float64))  # as the bootstrap's percentiles are
            out[kind] = scoring.AggregateScore(low=one, mid=one, high=one)
        return out

    aggregate.regress_quick = True  # type: ignore[attr-defined]
    aggregate.slow = slow  # type: ignore[attr-defined]
    cls.aggregate = aggregate  # type: ignore[method-assign]


def run_lm_eval(lm: RegressLM, suite: Suite, cfg: RunConfig) -> Mapping[str, list[SampleResult]]:
    """Hand the suite to lm-eval's evaluator with ``lm`` as the model; return its samples."""
    import lm_eval
    import lm_eval.evaluator
    from lm_eval.tasks import TaskManager

    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    # lm-eval shells out to `git describe` for its own run metadata, which regress discards;
    # outside a git checkout that prints "fatal: not a git repository" on every run.
    # add_env_info runs torch's collect_env (subprocesses, seconds) for metadata we discard too.
    lm_eval.evaluator.get_git_commit_hash = lambda: None
    lm_eval.evaluator.add_env_info = lambda storage: None
    _cache_lm_eval_templates()
    seed_scorers()
    quick_rouge()
    tasks: list[Any] = [t.config if t.config is not None else t.name for t in suite.tasks]
    try:
        out = lm_eval.simple_evaluate(
            model=lm,
            tasks=tasks,
            apply_chat_template=suite.chat_template,
            log_samples=True,
            limit=cfg.limit,
            bootstrap_iters=0,
            # indexing lm-eval's thousands of task YAMLs takes ~13 s; skip it when every task is our own
            task_manager=TaskManager(verbosity="ERROR", include_defaults=any(t.config is None for t in suite.tasks)),
            verbosity="ERROR",
        )
    except RegressError:
        raise
    except (KeyError, ValueError, FileNotFoundError) as e:
        raise SuiteError(f"lm-eval could not load suite {suite.name!r}: {str(e).splitlines()[0]}") from e
    if out is None:
        raise SuiteError("lm-eval returned no results")
    return out["samples"]


def _cache_lm_eval_templates() -> None:
    """Compile each of lm-eval's prompt templates once instead of once per document.

    lm-eval's ``apply_template`` calls ``Environment.from_string`` for every document and
    field (4 compiles an item), which was ~40% of regress's own time on a 2,000-item
    run. Rendering a cached compiled template gives the same text: the template source,
    environment and filters are unchanged.
    """
    import functools

    import lm_eval.utils as U

    if getattr(U.apply_template, "_regress_cached", False):
        return
    compiled = functools.lru_cache(maxsize=1024)(U.env.from_string)

    def apply_template(template: str, doc: Mapping[str, Any]) -> str:
        return compiled(template).render(**doc)

    apply_template._regress_cached = True  # type: ignore[attr-defined]
    apply_template.__wrapped__ = U.apply_template  # type: ignore[attr-defined]  # lm-eval's own
    U.apply_template = apply_template


def item_hash(doc: Any) -> str:
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _text_hash(s: str) -> str:
    return hashlib.sha256(s.encode()).hexdigest()[:16]


def _value(v: Any) -> float | None:
    """A per-item metric value as a number: IFEval's instruction-level accuracies come as a
    list of bools per item (lm-eval averages them over all instructions), kept here as their mean."""
    if isinstance(v, bool | int | float):
        return float(v)
    if isinstance(v, list | tuple) and v and all(isinstance(x, bool | int | float) for x in v):
        return sum(float(x) for x in v) / len(v)
    return None


def item_metrics(samples: Sequence[SampleResult]) -> dict[str, float]:
    """Every metric of every filter of one item, keyed "metric,filter" as lm-eval names them."""
    out: dict[str, float] = {}
    for s in samples:
        for m in s.get("metrics") or []:
            v = _value(s.get(m))
            if v is not None:
                out[f"{m},{s.get('filter', 'none')}"] = v
    return out


def gate_key(task: TaskSpec, samples: Sequence[SampleResult], metrics: Mapping[str, float]) -> str:
    """The item's gating metric as "metric,filter": the suite's, else the first metric of the
    task's first filter as lm-eval lists them (the config's metric_list, the samples' filter order)."""
    if task.gate_metric is not None:
        if task.gate_metric not in metrics:
            raise SuiteError(f"task {task.name}: lm-eval scored no {task.gate_metric!r} ({', '.join(metrics)})")
        return task.gate_metric
    listed = [m["metric"] for m in (task.config or {}).get("metric_list") or [] if isinstance(m, Mapping)]
    first = samples[0]
    names = [m for m in listed if isinstance(m, str) and m in first] or list(first.get("metrics") or [])
    for m in (*names, "exact_match", "acc"):
        key = f"{m},{first.get('filter', 'none')}"
        if key in metrics:
            return key
    raise SuiteError(f"task {task.name}: no metric in lm-eval's sample ({first.get('metrics')})")


class _Answered(NamedTuple):
    """What the backend was asked and answered for one item, joined on lm-eval's identity."""

    prompt: str
    target: str
    output: str
    answer: str
    kind: str
    generation: Generation | None  # generate_until: the full generation


def answered(served: Sequence[Request], lm: RegressLM, sample: SampleResult) -> _Answered:
    """The item's prompt, output and answer from the requests lm-eval made for it (in its
    ``idx`` order) and the answers the backend gave them. Multiple choice (log-likelihood
    requests): the output is the continuation with the highest log-likelihood (the first on
    a tie, as lm-eval's argmax), and a gold label given as a choice index becomes its text."""
    target = str(sample.get("target", ""))
    first = served[0]
    if isinstance(first, GenRequest):
        g = lm.generation(first)
        filtered = sample.get("filtered_resps")
        answer = filtered[0] if isinstance(filtered, list) and filtered else filtered
        return _Answered(first.prompt, target, g.text, str(answer), "generate_until", g)
    choices = [r for r in served if isinstance(r, LoglikRequest)]
    lls = [lm.loglik(r).logprob for r in choices]
    best = max(range(len(lls)), key=lambda i: lls[i])
    conts = [r.continuation for r in choices]
    if target.isdigit() and int(target) < len(conts):  # lm-eval logs the gold choice's index
        target = conts[int(target)]
    return _Answered(first.context, target, conts[best], conts[best], "multiple_choice", None)


def records_of(task: TaskSpec, samples: Sequence[SampleResult], lm: RegressLM) -> list[Record]:
    """One ``Record`` per item: lm-eval's samples joined, on lm-eval's own request identity
    (task, doc_id, idx), to the requests ``lm`` served and the answers it got for them.

    lm-eval logs one sample per (item, filter); the record's ``score``/``metric``/``answer`` are
    the gating metric's (``metric`` named plainly where the filter is lm-eval's "none", as our
    own tasks always were), ``metrics`` every metric of every filter.
    """
    by_doc: dict[int, list[SampleResult]] = {}
    for s in samples:
        by_doc.setdefault(int(s["doc_id"]), []).append(s)
    return [_record(task, doc_id, by_doc[doc_id], lm) for doc_id in sorted(by_doc)]


def _record(task: TaskSpec, doc_id: int, group: Sequence[SampleResult], lm: RegressLM) -> Record:
    metrics = item_metrics(group)
    key = gate_key(task, group, metrics)
    name, _, filt = key.partition(",")
    s = next((x for x in group if x.get("filter", "none") == filt), group[0])
    served = [r for _, r in lm.served.of_item(task.name, doc_id)]
    if not served:
        raise SuiteError(f"task {task.name}: lm-eval logged item {doc_id} but asked no request for it")
    a = answered(served, lm, s)
    doc = s["doc"]
    g = a.generation
    return Record(
        task=task.name,
        item_id=str(doc.get("id", doc_id)) if isinstance(doc, dict) else str(doc_id),
        item_hash=item_hash(doc),
        prompt_hash=_text_hash(a.prompt),
        prompt=a.prompt,
        target=a.target,
        output=a.output,
        answer=a.answer,
        score=metrics[key],
        metric=name if filt == "none" else key,
        kind=a.kind,
        finish=g.finish if g else None,
        stop_reason=g.stop_reason if g else None,
        n_tokens=g.n_tokens if g else 0,
        token_ids=g.token_ids if g else (),
        metrics=metrics,
    )
