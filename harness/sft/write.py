"""Writing an audit folder: ``audit.jsonl``, ``masked.jsonl`` (the mask to train on),
``summary.json``, ``audit.md`` and ``tokens.png``, into a temporary sibling renamed into
place, so a failure leaves nothing half-written."""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

from harness.sft.plot import plot
from harness.sft.records import Audit, Scored
from harness.sft.rule import IGNORE
from harness.store import atomic_folder
from harness.types import JsonObject

MD_ROWS = 200  # audit.md lists every example up to this many, else the outliers and the first ones


def _audit_row(a: Audit, s: Scored) -> JsonObject:
    return {
        "line": s.line,
        "tokens": len(s.ids),
        "assistant_tokens": len(s.tokens),
        "key_tokens": s.key_tokens,
        "key_share": s.key_share,
        "prompt_tokens": s.prompt_tokens,
        "prompt_ppl": math.exp(s.log_ppl) if math.isfinite(s.log_ppl) else None,
        "outlier": a.outlier(s),
        "kept": a.kept(s),
        "assistant": [asdict(t) for t in s.tokens],
    }


def _masked_row(s: Scored) -> JsonObject:
    labels = s.labels()
    return {
        "input_ids": list(s.ids),
        "attention_mask": [1] * len(s.ids),
        "labels": labels,
        "assistant_masks": [int(x != IGNORE) for x in labels],
        "line": s.line,
    }


def _fmt_ppl(s: Scored) -> str:
    return f"{math.exp(s.log_ppl):.3g}" if math.isfinite(s.log_ppl) else "n/a"


def render_markdown(a: Audit) -> str:
    sm = a.summary()
    thr = "none (fewer than 4 examples)" if a.threshold is None else f"{sm['outlier_ppl_threshold']:.4g}"
    lines = [
        "# Key-token audit",
        "",
        f"- base: `{a.base}`",
        f"- data: `{a.data}`",
        f"- rule: {a.rule.describe()}",
        f"- examples: {sm['examples']}; assistant tokens: {sm['assistant_tokens']}; "
        f"key: {sm['key_tokens']} ({sm['key_share']:.1%}); greedy-matched: {sm['greedy_matched']}",
        f"- prompt perplexity outlier threshold: {thr}",
        f"- dropped from masked.jsonl: {sm['outliers_dropped']} outlier prompt(s)"
        + (f" (lines {', '.join(map(str, sm['outlier_lines'][:20]))}{', ...' if sm['outliers_dropped'] > 20 else ''})"
           if sm["outliers_dropped"] else "")
        + f", {sm['no_key_dropped']} example(s) without a key token (nothing to train); kept: {sm['kept']}",
        "",
        "Train on `masked.jsonl`: `labels` are -100 except on key tokens (transformers' `Trainer` with "
        "`DataCollatorForSeq2Seq`); TRL's `SFTTrainer` takes it pre-tokenized and masks by `assistant_masks`.",
        "",
        "| line | assistant tokens | key share | prompt ppl | outlier |",
        "|---:|---:|---:|---:|:---|",
    ]  # fmt: skip
    shown = list(a.examples)
    if len(shown) > MD_ROWS:
        first = shown[:50]
        shown = first + [s for s in shown[50:] if a.outlier(s)]
    for s in shown:
        lines.append(
            f"| {s.line} | {len(s.tokens)} | {s.key_share:.2f} | {_fmt_ppl(s)} | {'yes' if a.outlier(s) else ''} |"
        )
    if len(shown) < len(a.examples):
        lines += ["", f"({len(a.examples) - len(shown)} more examples, none an outlier, in audit.jsonl)"]
    return "\n".join(lines) + "\n"


def write(a: Audit, out: str | Path) -> Path:
    """Write the audit folder: into a temporary sibling, then renamed over ``out``."""
    out = Path(out)
    with atomic_folder(out, "audit") as tmp:
        with (tmp / "audit.jsonl").open("w", encoding="utf-8") as fh:
            for s in a.examples:
                fh.write(json.dumps(_audit_row(a, s), ensure_ascii=False) + "\n")
        with (tmp / "masked.jsonl").open("w", encoding="utf-8") as fh:
            for s in a.examples:
                if a.kept(s):
                    fh.write(json.dumps(_masked_row(s)) + "\n")
        (tmp / "summary.json").write_text(json.dumps(a.summary(), indent=2), encoding="utf-8")
        (tmp / "audit.md").write_text(render_markdown(a), encoding="utf-8")
        plot(a, tmp / "tokens.png")
    return out
