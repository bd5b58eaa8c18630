"""The whole pass: load the base, render and score every example, find the outliers
(``audit_examples``); ``run`` is ``regress tokens`` (read, audit, write), ``masked_rows`` the
same pass in memory for training code."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from harness.errors import RegressError
from harness.sft.data import parse_rows, read_data
from harness.sft.records import Audit, Example
from harness.sft.render import eot_ids, render
from harness.sft.rule import TokenRule, outlier_threshold
from harness.sft.scoring import load_base, score
from harness.sft.write import write


def audit_examples(base: str | Path, examples: Sequence[Example], source: str, rule: TokenRule,
                   batch_size: int = 8) -> Audit:  # fmt: skip
    """Load the base, render and score every example, find the outliers."""
    ckpt, tok, model = load_base(base)
    eot = eot_ids(ckpt)
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


def run(base: str | Path, data: str | Path, out: str | Path, rule: TokenRule | None = None,
        batch_size: int = 8) -> Audit:  # fmt: skip
    """``regress tokens``: read and check the data, score it under the base, write ``out``."""
    examples = read_data(data)  # every input error before the model loads and before anything is written
    a = audit_examples(base, examples, str(data), rule or TokenRule(), batch_size)
    write(a, out)
    return a
