"""regress's shortcut for rouge-score's bootstrap of a single score (``runner.quick_rouge``), which
lm-eval's TruthfulQA generation runs for every reference of every item: the same floats, bit
for bit, on real TruthfulQA references against answers of every kind (another item's
references, sentences joined by " . ", empty, unrelated text); taken by the very function
lm-eval calls (its ``process_results_gen``, loaded from suite real's task as lm-eval loads it,
a module of its own) with all twelve of its metrics unchanged; more than one score is
bootstrapped as before."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from tests.conftest import REPO

DATA = REPO.parent / "shared" / "benchmarks"
TQA = DATA / "truthfulqa__truthful_qa" / "generation" / "validation.jsonl"
pytestmark = pytest.mark.skipif(not TQA.is_file(), reason=f"no TruthfulQA data at {TQA}")


@pytest.fixture(scope="module")
def scoring():
    """rouge-score's scoring module with regress's shortcut in place; ``BootstrapAggregator.
    aggregate.slow`` is rouge-score's own method."""
    from rouge_score import scoring

    from harness.runner import quick_rouge

    quick_rouge()
    quick_rouge()  # a second call changes nothing
    agg = scoring.BootstrapAggregator.aggregate
    assert agg.regress_quick and not getattr(agg.slow, "regress_quick", False)
    return scoring


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


def _aggregate(scoring, method, ref: str, answer: str):
    from rouge_score import rouge_scorer

    agg = scoring.BootstrapAggregator()
    agg.add_scores(rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeLsum"]).score(ref, answer))
    return method(agg)


def test_one_score_is_what_its_bootstrap_returns_to_the_bit(scoring):
    docs = _docs(12)
    refs = [r for d in docs for r in d["correct_answers"][:2] + d["incorrect_answers"][:1]]
    quick, slow = scoring.BootstrapAggregator.aggregate, scoring.BootstrapAggregator.aggregate.slow
    for answer in _answers(docs):
        for ref in refs[:6]:
            a, b = _aggregate(scoring, quick, ref, answer), _aggregate(scoring, slow, ref, answer)
            assert a == b, (ref, answer)
            fields = [(x, y) for k in b for bound in ("low", "mid", "high")
                      for x, y in zip(getattr(a[k], bound), getattr(b[k], bound))]  # fmt: skip
            assert all(type(x) is type(y) is np.float64 for x, y in fields), (ref, answer)


def test_the_function_lm_eval_calls_takes_it_and_scores_as_before(scoring, monkeypatch):
    from harness.config import RunConfig
    from harness.suites import suite_for

    task = suite_for(RunConfig(suite="real", tasks="truthfulqa_gen", data=str(DATA))).task("truthfulqa_gen")
    process = task.config["process_results"]  # as regress hands the task to lm-eval
    docs = _docs(6)
    answers = _answers(docs)
    for i, doc in enumerate(docs):
        answer = [answers[i * 7 % len(answers)]]
        with monkeypatch.context() as m:  # no bootstrap draw: the shortcut answered every reference
            m.setattr(np.random, "choice", lambda *a, **k: pytest.fail("bootstrapped a single score"))
            quick = process(doc, answer)
        with monkeypatch.context() as m:
            m.setattr(scoring.BootstrapAggregator, "aggregate", scoring.BootstrapAggregator.aggregate.slow)
            slow = process(doc, answer)
        assert len(slow) == 12 and quick == slow, doc["question"]


def test_more_than_one_score_is_bootstrapped_as_before(scoring):
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rougeLsum"])
    aggs = [scoring.BootstrapAggregator() for _ in range(2)]
    for agg in aggs:
        for ref, answer in (("a b c d", "a b c"), ("b c d e f", "a b c"), ("x y", "a b c")):
            agg.add_scores(scorer.score(ref, answer))
    np.random.seed(7)
    quick = scoring.BootstrapAggregator.aggregate(aggs[0])
    np.random.seed(7)
    assert quick == scoring.BootstrapAggregator.aggregate.slow(aggs[1])  # the same draws: the bootstrap ran
    assert quick["rouge1"].low != quick["rouge1"].high  # an interval, not one score
