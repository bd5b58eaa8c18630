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
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from harness import probes
from harness.backends import load_backend, output_settings
from harness.config import RunConfig
from harness.errors import RegressError, SuiteError
from harness.lm_adapter import RegressLM, _gen_request, gen_key
from harness.store import RunStore, lm_eval_version, run_key
from harness.suites import data_root
from harness.types import (
    DriftValues,
    Generation,
    LoadedCheckpoint,
    LoglikRequest,
    Messages,
    Record,
    RunResult,
    Suite,
    TaskSpec,
)

log = logging.getLogger(__name__)
Sample = Mapping[str, Any]  # one item as lm-eval's log_samples gives it (doc, arguments, resps, metrics)


def store_meta(path: str, fp: str, suite: Suite, cfg: RunConfig, files: dict[str, str] | None = None) -> dict[str, Any]:
    settings = output_settings(cfg.backend, cfg.options)
    parts = {
        "fingerprint": fp,
        "suite_hash": suite.content_hash,
        "backend": cfg.backend,
        "settings": settings,
        "limit": cfg.limit,
        "lm_eval": lm_eval_version(),  # lm-eval builds the prompts and scores
    }
    if cfg.noise_variant:
        parts["noise_variant"] = cfg.noise_variant
    # files: what the fingerprint was made of, so `regress baselines` can say what changed
    # data: the data root asked for (--data, else $REGRESS_DATA), resolved, so that `regress
    # baselines` rebuilds the suite as it was run; the data files' hashes are in the suite hash
    root = data_root(cfg.data)
    data = str(root) if root else None
    extra = {"checkpoint": path, "suite": suite.name, "suite_path": suite.path, "data": data, "files": files or {}}
    return {**parts, "key": run_key(parts), **extra}


def store_folder(cfg: RunConfig, meta: Mapping[str, Any]) -> Path:
    label = Path(meta["checkpoint"]).name.replace(os.sep, "_")[:40] or "ckpt"
    own = Path(cfg.store_dir) / f"{label}-{meta['key']}"
    if not own.exists():  # the same content under another name (a copy, a move) is the same run
        done = [d for d in Path(cfg.store_dir).glob(f"*-{meta['key']}") if (d / "records.jsonl").is_file()]
        if done:
            return sorted(done)[0]
    return own


def evaluate(
    ck: LoadedCheckpoint, suite: Suite, cfg: RunConfig, reference: Sequence[Record] | None = None
) -> RunResult:
    """Records of checkpoint ``ck`` on ``suite`` (stored, or computed and stored), plus its probes.

    ``reference`` is the base's records when ``ck`` is a candidate: the drift probes
    score the base's answers under this checkpoint. Without it they score its own.
    The engine starts only when a request is not in the store.
    """
    meta = store_meta(ck.path, ck.fingerprint, suite, cfg, dict(ck.files))
    tokenizer = ck.tokenizer

    def chat(messages: Messages, add_generation_prompt: bool) -> str:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)

    with RunStore.open(store_folder(cfg, meta), meta) as store:
        lm = RegressLM(
            lambda: load_backend(cfg.backend, ck, cfg.options), store, chat, ck.path,
            chunk_size=cfg.options.chunk_size, label=Path(ck.path).name,
        )  # fmt: skip
        lm.reverse = bool(cfg.noise_variant)
        try:
            reused = store.complete
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
            backend_requests=lm.backend_requests,
        )  # fmt: skip


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


def run_lm_eval(lm: RegressLM, suite: Suite, cfg: RunConfig) -> Mapping[str, list[Sample]]:
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


def item_metrics(samples: Sequence[Sample]) -> dict[str, float]:
    """Every metric of every filter of one item, keyed "metric,filter" as lm-eval names them."""
    out: dict[str, float] = {}
    for s in samples:
        for m in s.get("metrics") or []:
            v = _value(s.get(m))
            if v is not None:
                out[f"{m},{s.get('filter', 'none')}"] = v
    return out


def gate_key(task: TaskSpec, samples: Sequence[Sample], metrics: Mapping[str, float]) -> str:
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


def _args(arg: Any) -> tuple[Any, Any]:
    if isinstance(arg, dict):  # lm-eval logs arguments as {"gen_args_0": {"arg_0":..., "arg_1":...}}
        vals = list(arg.values())
        return vals[0], vals[1]
    return arg[0], arg[1]


def records_of(task: TaskSpec, samples: Sequence[Sample], lm: RegressLM) -> list[Record]:
    """One ``Record`` per item, with what the backend recorded joined in.

    lm-eval logs one sample per (item, filter); the record's ``score``/``metric``/``answer`` are
    the gating metric's (``metric`` named plainly where the filter is lm-eval's "none", as our
    own tasks always were), ``metrics`` every metric of every filter.
    """
    by_doc: dict[int, list[Sample]] = {}
    for s in samples:
        by_doc.setdefault(int(s["doc_id"]), []).append(s)
    out = []
    for doc_id in sorted(by_doc):
        group = by_doc[doc_id]
        metrics = item_metrics(group)
        key = gate_key(task, group, metrics)
        name, _, filt = key.partition(",")
        s = next((x for x in group if x.get("filter", "none") == filt), group[0])
        doc = s["doc"]
        item_id = str(doc.get("id", doc_id)) if isinstance(doc, dict) else str(doc_id)
        args = s["arguments"]
        args = list(args.values()) if isinstance(args, dict) else args
        base: dict[str, Any] = {
            "task": task.name,
            "item_id": item_id,
            "item_hash": item_hash(doc),
            "target": str(s.get("target", "")),
            "score": metrics[key],
            "metric": name if filt == "none" else key,
            "metrics": metrics,
        }
        filtered = s.get("filtered_resps")
        if isinstance(filtered, list) and filtered and isinstance(filtered[0], list | tuple):
            # multiple choice: one (logprob, greedy) per choice; the output is the argmax choice
            ctx, _ = _args(args[0])
            conts = [_args(a)[1] for a in args]
            lls = lm.score([LoglikRequest(ctx, c) for c in conts])
            best = max(range(len(lls)), key=lambda i: lls[i].logprob)
            label = str(base["target"])
            if label.isdigit() and int(label) < len(conts):  # lm-eval logs the gold choice's index
                base["target"] = conts[int(label)]
            out.append(
                Record(
                    **base,
                    prompt_hash=_text_hash(ctx),
                    prompt=ctx,
                    output=conts[best],
                    answer=conts[best],
                    kind="multiple_choice",
                )
            )
            continue
        ctx, kw = _args(args[0])
        g = lm.generations[gen_key(_gen_request(ctx, kw, lm.default_max_tokens))]
        answer = filtered[0] if isinstance(filtered, list) and filtered else filtered
        out.append(
            Record(
                **base,
                prompt_hash=_text_hash(ctx),
                prompt=ctx,
                output=g.text,
                answer=str(answer),
                kind="generate_until",
                finish=g.finish,
                stop_reason=g.stop_reason,
                n_tokens=g.n_tokens,
                token_ids=g.token_ids,
            )
        )
    return out
