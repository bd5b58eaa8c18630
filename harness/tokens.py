"""``regress tokens``: which assistant tokens of a chat SFT file the base already produces.

The seed's remedy for forgetting is "minimal modification": fine-tune only on the tokens
that carry knowledge the base lacks, and drop prompts the base cannot attend to. This
module measures both for a chat SFT file (JSONL, one ``{"messages": [{"role": ...,
"content": ...}, ...]}`` per line, the TRL / Hugging Face chat format) and writes a masked
copy of the data to train on::

    regress tokens --base B --data sft.jsonl [--out DIR] [--min-prob P] [--outlier-k K]

Each example is rendered with the base's own chat template and run through the base once
(teacher forcing, batched, ``torch.no_grad``, float32 on CPU). Each assistant token gets
its greedy match (the base's argmax at that position is the token), its probability and
its rank (1 = the argmax; 1 + the number of tokens with a strictly higher logit).

**The rule** (``is_key``): an assistant token is *key* when the base would not already
produce it: its argmax is another token, or its probability is below ``min_prob``
(``--min-prob``, 0 by default, so by default the rule is greedy mismatch alone). Prompt
and template tokens are never key. An assistant turn is the text its template adds for
the turn, up to and including the first end-of-turn token (``EotSetup.stop_ids`` or the
template's turn end), so ChatML's newline after ``<|im_end|>`` is not trained on.

**Prompt outliers** (``outlier_threshold``): an example's prompt perplexity is exp of the
mean negative log-likelihood, under the base, of its tokens outside the assistant turns
(after the first token, which nothing predicts). An example is an outlier when its log
perplexity is above Q3 + k * IQR of the file's log perplexities (k = ``--outlier-k``, 3
by default; quartiles by linear interpolation; with fewer than 4 examples nothing is an
outlier).

Written into DIR (a temporary sibling folder renamed into place, so a failure leaves
nothing half-written):

* ``audit.jsonl``: per example its line, token counts, key share, prompt perplexity,
  outlier flag, whether it is kept, and each assistant token's score;
* ``audit.md``: the rule, the totals, what was dropped, a per-example table;
* ``masked.jsonl``: the kept examples (not outliers, at least one key token) as
  ``input_ids``, ``attention_mask``, ``labels`` (-100 everywhere but on key tokens; the
  causal-LM loss of ``transformers`` shifts them itself; pad with
  ``DataCollatorForSeq2Seq``, which pads labels with -100) and ``assistant_masks`` (1 on
  key tokens), which TRL's ``SFTTrainer`` uses on pre-tokenized data: its collator builds
  labels from ``input_ids`` and sets -100 where ``assistant_masks`` is 0;
* ``summary.json``: the totals; ``tokens.png``: histograms of per-example key share and of
  assistant-token probabilities.

``masked_rows(base, rows)`` is the same pass for training code in memory (the demo and
real-model builds): (input_ids, labels) of the kept examples.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from harness.errors import RegressError
from harness.store import atomic_folder

IGNORE = -100  # the label transformers' and TRL's losses skip
MD_ROWS = 200  # audit.md lists every example up to this many, else the outliers and the first ones


# -- the rule (pure) ------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenRule:
    """What makes a token key and a prompt an outlier (``--min-prob``, ``--outlier-k``)."""

    min_prob: float = 0.0
    outlier_k: float = 3.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_prob <= 1.0:
            raise RegressError(f"--min-prob must be between 0 and 1 (got {self.min_prob})")
        if not self.outlier_k > 0:
            raise RegressError(f"--outlier-k must be above 0 (got {self.outlier_k})")

    def describe(self) -> str:
        key = "the base's argmax is another token"
        if self.min_prob > 0:
            key += f", or the base gives it probability below {self.min_prob:g}"
        return (
            f"an assistant token is key when {key}; prompt and template tokens are never key. "
            f"A prompt is an outlier when its log perplexity under the base is above "
            f"Q3 + {self.outlier_k:g} x IQR of the file's log prompt perplexities."
        )


def is_key(greedy: bool, prob: float, min_prob: float = 0.0) -> bool:
    """The base would not already produce this token: not its argmax, or below ``min_prob``."""
    return (not greedy) or prob < min_prob


def quartiles(values: Sequence[float]) -> tuple[float, float]:
    """Q1 and Q3 by linear interpolation between order statistics (numpy's default)."""
    xs = sorted(values)

    def q(p: float) -> float:
        pos = p * (len(xs) - 1)
        lo = math.floor(pos)
        hi = min(lo + 1, len(xs) - 1)
        return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)

    return q(0.25), q(0.75)


def outlier_threshold(log_ppls: Sequence[float], k: float) -> float | None:
    """Q3 + k * IQR of the log perplexities; None with fewer than 4 (no quartiles to speak of)."""
    finite = [x for x in log_ppls if math.isfinite(x)]
    if len(finite) < 4:
        return None
    q1, q3 = quartiles(finite)
    return q3 + k * (q3 - q1)


def turn_spans(prefixes: Sequence[tuple[str, str]], full: str) -> list[tuple[int, int]]:
    """Character spans of the assistant turns in ``full``, from each turn's (text before it
    with the generation prompt, text up to and including it): the turn is what lies between.
    Both must be prefixes of ``full``, or the template renders a turn differently once
    later turns follow and no span can be trusted (ValueError)."""
    spans = []
    for before, upto in prefixes:
        if not (full.startswith(before) and full.startswith(upto) and len(upto) >= len(before)):
            raise ValueError("the chat template renders earlier turns differently once a later turn follows")
        spans.append((len(before), len(upto)))
    return spans


def assistant_mask(
    offsets: Sequence[tuple[int, int]], ids: Sequence[int], spans: Sequence[tuple[int, int]], eot_ids: Iterable[int]
) -> list[bool]:
    """Which tokens belong to an assistant turn: those that start inside a span, up to and
    including the span's first end-of-turn token (what follows it, e.g. ChatML's newline, is
    template text the model never generates)."""
    eot = set(eot_ids)
    mask = [False] * len(ids)
    for start, end in spans:
        for i, (a, _) in enumerate(offsets):
            if start <= a < end:
                mask[i] = True
                if ids[i] in eot:
                    break
    return mask


def labels_of(ids: Sequence[int], key: Sequence[bool]) -> list[int]:
    """Causal-LM labels: the token where it is key, -100 elsewhere (transformers shifts them)."""
    return [t if k else IGNORE for t, k in zip(ids, key)]


def token_scores(logits: Any, targets: Any) -> tuple[Any, Any, Any, Any]:
    """Teacher-forced scores of ``targets`` (..., n) under ``logits`` (..., n, vocab), position i
    predicting target i: greedy match (argmax == target), probability, rank (1 + the number of
    strictly higher logits) and log-probability, as tensors shaped like ``targets``. One call per
    batch: on a busy CPU every small torch op costs a thread hand-off, so per-row calls are slow."""
    import torch

    logits = logits.float()
    tgt = targets.long().unsqueeze(-1)
    picked = logits.gather(-1, tgt)
    lp = (picked - torch.logsumexp(logits, dim=-1, keepdim=True)).squeeze(-1)
    greedy = logits.argmax(dim=-1) == tgt.squeeze(-1)
    rank = (logits > picked).sum(dim=-1) + 1
    return greedy, lp.exp(), rank, lp


# -- records --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Example:
    """One line of the SFT file: its line number and chat messages."""

    line: int
    messages: tuple[Mapping[str, Any], ...]


@dataclass(frozen=True)
class Rendered:
    """An example rendered with the base's template: token ids and which are assistant tokens."""

    line: int
    ids: tuple[int, ...]
    assistant: tuple[bool, ...]


@dataclass(frozen=True)
class TokenScore:
    """One assistant token under the base."""

    pos: int
    id: int
    text: str
    prob: float
    rank: int
    greedy: bool
    key: bool


@dataclass(frozen=True)
class Scored:
    """An example scored under the base."""

    line: int
    ids: tuple[int, ...]
    tokens: tuple[TokenScore, ...]  # the assistant tokens
    prompt_tokens: int
    prompt_nll: float  # summed over the prompt tokens after the first

    @property
    def key_tokens(self) -> int:
        return sum(t.key for t in self.tokens)

    @property
    def key_share(self) -> float:
        return self.key_tokens / len(self.tokens) if self.tokens else 0.0

    @property
    def log_ppl(self) -> float:
        n = self.prompt_tokens - 1
        return self.prompt_nll / n if n > 0 else float("nan")

    def labels(self) -> list[int]:
        key = {t.pos for t in self.tokens if t.key}
        return labels_of(self.ids, [i in key for i in range(len(self.ids))])


@dataclass(frozen=True)
class Audit:
    """The whole file: scored examples, the outlier threshold and which examples are kept."""

    base: str
    data: str
    rule: TokenRule
    examples: tuple[Scored, ...]
    threshold: float | None  # on log perplexity

    def outlier(self, s: Scored) -> bool:
        return self.threshold is not None and math.isfinite(s.log_ppl) and s.log_ppl > self.threshold

    def kept(self, s: Scored) -> bool:
        return not self.outlier(s) and s.key_tokens > 0

    def summary(self) -> dict[str, Any]:
        ex = self.examples
        n_asst = sum(len(s.tokens) for s in ex)
        n_key = sum(s.key_tokens for s in ex)
        outliers = [s.line for s in ex if self.outlier(s)]
        no_key = [s.line for s in ex if not self.outlier(s) and s.key_tokens == 0]
        return {
            "base": self.base,
            "data": self.data,
            "rule": {**asdict(self.rule), "text": self.rule.describe()},
            "examples": len(ex),
            "assistant_tokens": n_asst,
            "key_tokens": n_key,
            "key_share": n_key / n_asst if n_asst else 0.0,
            "greedy_matched": sum(t.greedy for s in ex for t in s.tokens),
            "outlier_log_ppl_threshold": self.threshold,
            "outlier_ppl_threshold": math.exp(self.threshold) if self.threshold is not None else None,
            "outliers_dropped": len(outliers),
            "outlier_lines": outliers,
            "no_key_dropped": len(no_key),
            "kept": sum(self.kept(s) for s in ex),
        }


# -- reading the data -----------------------------------------------------------------------


def parse_rows(rows: Iterable[tuple[int, Any]], source: str) -> list[Example]:
    """Check each (line, object) is a chat example with an assistant turn; ``source:line`` errors."""
    out = []
    for line, obj in rows:
        where = f"{source}:{line}"
        msgs = obj.get("messages") if isinstance(obj, dict) else None
        if not isinstance(msgs, list) or not msgs:
            raise RegressError(f'{where}: expected {{"messages": [{{"role": ..., "content": ...}}, ...]}}')
        for j, m in enumerate(msgs):
            if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
                raise RegressError(f"{where}: message {j} needs a string role and a string content")
        if not any(m["role"] == "assistant" for m in msgs):
            raise RegressError(f"{where}: no assistant turn (nothing to score or train)")
        out.append(Example(line, tuple(msgs)))
    return out


def read_data(path: str | Path) -> list[Example]:
    """The examples of an SFT JSONL file (blank lines skipped)."""
    p = Path(path)
    if not p.is_file():
        raise RegressError(f"SFT data not found: {path}")
    rows = []
    try:
        with p.open(encoding="utf-8") as fh:
            for n, text in enumerate(fh, 1):
                if not text.strip():
                    continue
                try:
                    rows.append((n, json.loads(text)))
                except json.JSONDecodeError as e:
                    raise RegressError(f"{path}:{n}: malformed JSON: {e.msg} (column {e.colno})") from e
    except UnicodeDecodeError as e:
        raise RegressError(f"{path}: not UTF-8 text: {e.reason}") from e
    examples = parse_rows(rows, str(path))
    if not examples:
        raise RegressError(f"{path}: no examples")
    return examples


# -- rendering and scoring ------------------------------------------------------------------


def _eot_ids(ckpt: Any) -> set[int]:
    ids = set(ckpt.eot.stop_ids)
    if ckpt.eot.template_turn_end_id is not None:
        ids.add(ckpt.eot.template_turn_end_id)
    return ids


def _template(tok: Any, msgs: Sequence[Mapping[str, Any]], gen: bool) -> str:
    text = tok.apply_chat_template(list(msgs), tokenize=False, add_generation_prompt=gen)
    assert isinstance(text, str)  # tokenize=False
    return text


def render(tok: Any, ex: Example, eot_ids: Iterable[int], source: str) -> Rendered:
    """``ex`` rendered with the tokenizer's chat template; its assistant tokens marked."""
    msgs = ex.messages
    try:
        full = _template(tok, msgs, False)
        prefixes = [
            (_template(tok, msgs[:i], True), _template(tok, msgs[: i + 1], False))
            for i, m in enumerate(msgs)
            if m["role"] == "assistant"
        ]
        spans = turn_spans(prefixes, full)
    except Exception as e:  # noqa: BLE001 - a template raises what it likes (jinja's TemplateError, ...)
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise RegressError(f"{source}:{ex.line}: the base's chat template cannot render this example: {first}") from e
    enc = tok(full, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    mask = assistant_mask(enc["offset_mapping"], ids, spans, eot_ids)
    return Rendered(ex.line, tuple(ids), tuple(mask))


def score(model: Any, tok: Any, items: Sequence[Rendered], rule: TokenRule, batch_size: int = 8) -> list[Scored]:
    """Each rendered example scored under ``model`` (teacher forcing), in the input's order.
    Batches are formed over examples sorted by length, right-padded."""
    import torch
    from tqdm.auto import tqdm

    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    out: dict[int, Scored] = {}
    texts = _TokenTexts(tok)
    order = sorted(range(len(items)), key=lambda i: -len(items[i].ids))
    bar = tqdm(total=len(items), desc="scoring tokens", unit="example", leave=False, disable=None)
    with torch.no_grad():
        for s in range(0, len(order), batch_size):
            batch = [items[i] for i in order[s : s + batch_size]]
            width = max(len(r.ids) for r in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            att = torch.zeros((len(batch), width), dtype=torch.long)
            for j, r in enumerate(batch):
                ids[j, : len(r.ids)] = torch.tensor(r.ids)
                att[j, : len(r.ids)] = 1
            logits = model(input_ids=ids, attention_mask=att).logits
            greedy, prob, rank, lp = (t.tolist() for t in token_scores(logits[:, :-1], ids[:, 1:]))
            for j, (i, r) in enumerate(zip(order[s : s + batch_size], batch)):
                out[i] = _scored(texts, r, greedy[j], prob[j], rank[j], lp[j], rule)
            bar.update(len(batch))
    bar.close()
    return [out[i] for i in range(len(items))]


class _TokenTexts(dict[int, str]):
    """Each token id's text, decoded once."""

    def __init__(self, tok: Any) -> None:
        super().__init__()
        self.tok = tok

    def __missing__(self, tid: int) -> str:
        self[tid] = text = self.tok.decode([tid], skip_special_tokens=False)
        return text


def _scored(texts: _TokenTexts, r: Rendered, greedy: list[bool], prob: list[float], rank: list[int], lp: list[float],
            rule: TokenRule) -> Scored:  # fmt: skip
    toks = []
    nll, n_prompt = 0.0, 0
    for pos, (tid, asst) in enumerate(zip(r.ids, r.assistant)):
        if not asst:
            n_prompt += 1
            if pos > 0:
                nll -= lp[pos - 1]
            continue
        if pos == 0:  # nothing predicts the first token: not scored, never key
            continue
        g, p = greedy[pos - 1], prob[pos - 1]
        toks.append(TokenScore(pos, tid, texts[tid], p, rank[pos - 1], g, is_key(g, p, rule.min_prob)))
    return Scored(r.line, r.ids, tuple(toks), n_prompt, nll)


def _load(base: str | Path) -> tuple[Any, Any, Any]:
    """(checkpoint, tokenizer, model): validated, with a chat template, float32 on CPU."""
    import torch
    from transformers import AutoModelForCausalLM

    from harness.checkpoint import load

    ckpt = load(base)
    tok = ckpt.tokenizer
    if not getattr(tok, "chat_template", None):
        raise RegressError(f"checkpoint {base} has no chat template: regress tokens renders each example with it")
    if not getattr(tok, "is_fast", False):
        raise RegressError(f"checkpoint {base} has a slow tokenizer: regress tokens needs a fast one (offsets)")
    try:
        model = AutoModelForCausalLM.from_pretrained(ckpt.path, dtype=torch.float32, local_files_only=True)
    except (OSError, ValueError, RuntimeError) as e:
        raise RegressError(f"cannot load model weights from {ckpt.path}: {str(e).splitlines()[0]}") from e
    model.eval()
    return ckpt, tok, model


def audit_examples(base: str | Path, examples: Sequence[Example], source: str, rule: TokenRule,
                   batch_size: int = 8) -> Audit:  # fmt: skip
    """Load the base, render and score every example, find the outliers."""
    ckpt, tok, model = _load(base)
    eot = _eot_ids(ckpt)
    rendered = [render(tok, ex, eot, source) for ex in examples]
    limit = getattr(model.config, "max_position_embeddings", None)
    for r in rendered:
        if limit and len(r.ids) > limit:
            raise RegressError(f"{source}:{r.line}: {len(r.ids)} tokens, more than the base's {limit} positions")
    scored = score(model, tok, rendered, rule, batch_size)
    threshold = outlier_threshold([s.log_ppl for s in scored], rule.outlier_k)
    return Audit(str(base), source, rule, tuple(scored), threshold)


def masked_rows(base: str | Path, rows: Sequence[Mapping[str, Any]], rule: TokenRule | None = None,
                batch_size: int = 8) -> list[tuple[list[int], list[int]]]:  # fmt: skip
    """(input_ids, labels) of the kept examples of ``rows`` (``{"messages": ...}`` dicts) under ``base``."""
    examples = parse_rows(list(enumerate(rows, 1)), "<rows>")
    a = audit_examples(base, examples, "<rows>", rule or TokenRule(), batch_size)
    return [(list(s.ids), s.labels()) for s in a.examples if a.kept(s)]


# -- writing --------------------------------------------------------------------------------


def _audit_row(a: Audit, s: Scored) -> dict[str, Any]:
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


def _masked_row(s: Scored) -> dict[str, Any]:
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


def plot(a: Audit, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    left.hist([s.key_share for s in a.examples], bins=20, range=(0, 1), color="#4C72B0")
    left.set_xlabel("key share of an example's assistant tokens")
    left.set_ylabel("examples")
    key = [t.prob for s in a.examples for t in s.tokens if t.key]
    known = [t.prob for s in a.examples for t in s.tokens if not t.key]
    right.hist([known, key], bins=20, range=(0, 1), stacked=True, color=["#55A868", "#C44E52"],
               label=["not key (the base produces it)", "key"])  # fmt: skip
    right.set_xlabel("base probability of each assistant token")
    right.set_ylabel("tokens")
    right.set_yscale("log")
    right.legend(fontsize=8)
    fig.suptitle(f"{Path(a.data).name} under {Path(a.base).name}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=96)
    plt.close(fig)


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


def run(base: str | Path, data: str | Path, out: str | Path, rule: TokenRule | None = None,
        batch_size: int = 8) -> Audit:  # fmt: skip
    """``regress tokens``: read and check the data, score it under the base, write ``out``."""
    examples = read_data(data)  # every input error before the model loads and before anything is written
    a = audit_examples(base, examples, str(data), rule or TokenRule(), batch_size)
    write(a, out)
    return a
