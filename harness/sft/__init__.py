"""``regress tokens``, the SFT key-token tool: which assistant tokens of a chat SFT file the base
already produces. Not a stage of the gate: a tool for the training side, with its own package.

The seed's remedy for forgetting is "minimal modification": fine-tune only on the tokens
that carry knowledge the base lacks, and drop prompts the base cannot attend to. This
package measures both for a chat SFT file (JSONL, one ``{"messages": [{"role": ...,
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

Modules, one job each: ``rule`` (the key-token and outlier rules, pure), ``records``,
``data`` (reading the SFT file), ``render`` (chat template, assistant-token marks),
``scoring`` (the base's teacher-forced pass), ``audit`` (the whole pass; ``run``,
``masked_rows``), ``write`` (the audit folder and the mask), ``plot`` (``tokens.png``).
"""

from __future__ import annotations

from pathlib import Path

from harness.sft.audit import audit_examples, masked_rows, run
from harness.sft.data import parse_rows, read_data
from harness.sft.records import Audit, Example, Rendered, Scored, TokenScore
from harness.sft.render import assistant_mask, render, turn_spans
from harness.sft.rule import IGNORE, TokenRule, is_key, labels_of, outlier_threshold, quartiles
from harness.sft.scoring import score, token_scores

__all__ = [
    "IGNORE", "Audit", "Example", "Rendered", "Scored", "TokenRule", "TokenScore", "assistant_mask", "audit_examples",
    "is_key", "labels_of", "masked_rows", "outlier_threshold", "parse_rows", "quartiles", "read_data", "render", "run",
    "score", "token_scores", "turn_spans",
]  # fmt: skip


def sources() -> tuple[Path, ...]:
    """This package's modules: their code decides the masks (the demo builds key their
    key-token fine-tunes on it)."""
    return tuple(sorted(Path(__file__).parent.glob("*.py")))
