"""regress's shortcut for lm-eval's TruthfulQA ROUGE (``runner.quick_rouge``) gives lm-eval's
own scores, bit for bit: on real TruthfulQA references against answers of every kind (another
item's references, sentences joined by " . ", empty, unrelated text), and through lm-eval's
``process_results_gen`` with every metric it reports."""

from __future__ import annotations

import json
import random

import pytest

from tests.conftest import REPO

TQA = REPO.parent / "shared" / "benchmarks" / "truthfulqa__truthful_qa" / "generation" / "validation.jsonl"
pytestmark = pytest.mark.skipif(not TQA.is_file(), reason=f"no TruthfulQA data at {TQA}")


@pytest.fixture(scope="module")
def utils():
    """lm-eval's TruthfulQA module with regress's shortcut in place; ``utils.rouge.slow`` is
    lm-eval's function."""
    from lm_eval.tasks.truthfulqa import utils

    from harness.runner import quick_rouge

    quick_rouge()
    assert utils.rouge.regress_quick and not getattr(utils.rouge.slow, "regress_quick", False)
    return utils


def _docs(n: int) -> list[dict]:
    lines = TQA.read_text().splitlines()
    return [json.loads(line) for line in random.Random(0).sample(lines, n)]


def _answers(docs: list[dict]) -> list[str]:
    rng = random.Random(1)
    refs = [r for d in docs for r in d["correct_answers"] + d["incorrect_answers"]]
    return [
        "",
        " ",
        "I have no comment.",
        "The seeds pass through . They are excreted . Nothing happens",
        "Ünïcode — 日本語 and numbers 1,234.5",
        "word " * 200,
        *rng.sample(refs, 24),
        *(" ".join(rng.sample(refs, 3)) for _ in range(6)),
    ]


def test_quick_rouge_is_lm_evals_rouge_to_the_bit(utils):
    docs = _docs(12)
    refs = [r for d in docs for r in d["correct_answers"][:2] + d["incorrect_answers"][:1]]
    for answer in _answers(docs):
        for ref in refs[:6]:
            quick, slow = utils.rouge([ref], [answer]), utils.rouge.slow([ref], [answer])
            assert quick == slow and all(type(quick[k]) is type(slow[k]) for k in slow), (ref, answer)


def test_process_results_gen_is_unchanged(utils, monkeypatch):
    docs = _docs(6)
    answers = _answers(docs)
    for i, doc in enumerate(docs):
        answer = [answers[i * 7 % len(answers)]]
        quick = utils.process_results_gen(doc, answer)
        with monkeypatch.context() as m:
            m.setattr(utils, "rouge", utils.rouge.slow)
            slow = utils.process_results_gen(doc, answer)
        assert quick.keys() == slow.keys() and len(slow) == 12
        assert quick == slow, doc["question"]


def test_more_than_one_pair_goes_to_lm_evals_bootstrap(utils):
    import numpy as np

    refs, preds = ["a b c d", "b c d e f", "x y"], ["a b c", "a b c", "a b c"]
    np.random.seed(7)
    quick = utils.rouge(refs, preds)
    np.random.seed(7)
    assert quick == utils.rouge.slow(refs, preds)  # the same draws: lm-eval's function ran
