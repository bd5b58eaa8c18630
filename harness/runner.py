"""Run one checkpoint over a suite: lm-eval drives, the backend answers, the store keeps.

``evaluate(checkpoint, suite, config)`` returns the checkpoint's per-item ``Record``s.
When the store already holds complete records under the same key (same checkpoint
content, suite content, backend settings, record format), they are returned with no
engine started and no inference call made.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import checkpoint as ckpt
from harness.backends import load_backend
from harness.config import RunConfig
from harness.errors import RegressError, SuiteError
from harness.lm_adapter import RegressLM, gen_key, ll_key
from harness.store import RunStore, run_key
from harness.suites import Suite, TaskSpec
from harness.types import Checkpoint, GenRequest, LoglikRequest, Record

log = logging.getLogger(__name__)
OUTPUT_SETTINGS = ("dtype",)  # backend options that can change answers, part of the key


@dataclass(frozen=True)
class RunResult:
    checkpoint: Checkpoint
    records: tuple[Record, ...]
    store_path: str
    reused: bool
    backend_calls: int


def store_meta(path: str, fp: str, suite: Suite, cfg: RunConfig) -> dict[str, Any]:
    settings = {k: getattr(cfg.options, k) for k in OUTPUT_SETTINGS}
    parts = {
        "fingerprint": fp,
        "suite_hash": suite.content_hash,
        "backend": cfg.backend,
        "settings": settings,
        "limit": cfg.limit,
    }
    return {**parts, "key": run_key(parts), "checkpoint": path, "suite": suite.name}


def store_folder(cfg: RunConfig, meta: dict[str, Any]) -> Path:
    label = Path(meta["checkpoint"]).name.replace(os.sep, "_")[:40] or "ckpt"
    return Path(cfg.store_dir) / f"{label}-{meta['key']}"


def evaluate(path: str, suite: Suite, cfg: RunConfig) -> RunResult:
    p = ckpt.validate(path)
    fp = ckpt.fingerprint(p)
    meta = store_meta(str(p), fp, suite, cfg)
    with RunStore.open(store_folder(cfg, meta), meta) as store:
        if store.complete:
            return RunResult(Checkpoint(str(p), fp), tuple(store.load_records()), str(store.path), True, 0)
        tokenizer = ckpt.load_tokenizer(p, cfg.options.trust_remote_code)
        if suite.chat_template and not getattr(tokenizer, "chat_template", None):
            raise RegressError(f"checkpoint {path} has no chat template, which suite {suite.name!r} needs")

        def chat(messages: list[dict[str, Any]], add_generation_prompt: bool) -> str:
            return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)

        lm = RegressLM(lambda: load_backend(cfg.backend, str(p), cfg.options), store, chat, str(p))
        try:
            samples = run_lm_eval(lm, suite, cfg)
            records = [r for t in suite.tasks for r in records_of(t, samples.get(t.name, []), lm)]
        finally:
            lm.close()
        store.write_records(records)
        return RunResult(Checkpoint(str(p), fp), tuple(records), str(store.path), False, lm.backend_calls)


def run_lm_eval(lm: RegressLM, suite: Suite, cfg: RunConfig) -> dict[str, list[dict[str, Any]]]:
    """Hand the suite to lm-eval's evaluator with ``lm`` as the model; return its samples."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    tasks: list[Any] = [t.config if t.config is not None else t.name for t in suite.tasks]
    try:
        out = lm_eval.simple_evaluate(
            model=lm,
            tasks=tasks,
            apply_chat_template=suite.chat_template,
            log_samples=True,
            limit=cfg.limit,
            bootstrap_iters=0,
            task_manager=TaskManager(verbosity="ERROR"),
            verbosity="ERROR",
        )
    except RegressError:
        raise
    except (KeyError, ValueError, FileNotFoundError) as e:
        raise SuiteError(f"lm-eval could not load suite {suite.name!r}: {str(e).splitlines()[0]}") from e
    if out is None:
        raise SuiteError("lm-eval returned no results")
    return out["samples"]


def item_hash(doc: Any) -> str:
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _text_hash(s: str) -> str:
    return hashlib.sha256(s.encode()).hexdigest()[:16]


def _metric(task: TaskSpec, sample: dict[str, Any]) -> str:
    names = sample.get("metrics") or []
    for m in ("exact_match", "acc", *names):
        if m in sample:
            return m
    raise SuiteError(f"task {task.name}: no metric in lm-eval's sample ({names})")


def _args(arg: Any) -> tuple[Any, Any]:
    if isinstance(arg, dict):  # lm-eval logs arguments as {"gen_args_0": {"arg_0":..., "arg_1":...}}
        vals = list(arg.values())
        return vals[0], vals[1]
    return arg[0], arg[1]


def records_of(task: TaskSpec, samples: list[dict[str, Any]], lm: RegressLM) -> list[Record]:
    """One ``Record`` per lm-eval sample, with what the backend recorded joined in."""
    out = []
    for s in sorted(samples, key=lambda x: x["doc_id"]):
        doc = s["doc"]
        item_id = str(doc.get("id", s["doc_id"])) if isinstance(doc, dict) else str(s["doc_id"])
        metric = _metric(task, s)
        args = s["arguments"]
        args = list(args.values()) if isinstance(args, dict) else args
        base = {
            "task": task.name,
            "item_id": item_id,
            "item_hash": item_hash(doc),
            "target": str(s.get("target", "")),
            "score": float(s[metric]),
            "metric": metric,
            "metrics": {m: float(s[m]) for m in (s.get("metrics") or []) if isinstance(s.get(m), int | float)},
        }
        filtered = s.get("filtered_resps")
        if isinstance(filtered, list) and filtered and isinstance(filtered[0], list | tuple):
            # multiple choice: one (logprob, greedy) per choice; the output is the argmax choice
            ctx, _ = _args(args[0])
            conts = [_args(a)[1] for a in args]
            lls = lm.score([LoglikRequest(ctx, c) for c in conts])
            best = max(range(len(lls)), key=lambda i: lls[i].logprob)
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
        from harness.lm_adapter import _gen_request

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


__all__ = ["RunResult", "evaluate", "GenRequest", "ll_key"]
