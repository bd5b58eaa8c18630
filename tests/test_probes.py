"""Probes: the end-of-turn configuration check, drift arithmetic, termination statistics."""

from __future__ import annotations

import json
import math

import pytest

from harness import probes
from harness.demo.tokenizer import build_tokenizer
from harness.types import Generation, Loglik, Record


def _ckpt(tmp_path, eos):
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": eos}))
    return tmp_path


def test_demo_setup_is_consistent(tmp_path):
    tok = build_tokenizer()
    setup = probes.eot_setup(_ckpt(tmp_path, 2), tok)
    assert setup.template_turn_end == "<|end|>" and setup.template_turn_end_id == 2
    assert probes.config_findings("x", setup) == []


@pytest.mark.parametrize("eos", [[1], 1, [0, 1]])
def test_template_turn_end_that_is_not_a_stop_id_is_a_finding_with_the_fix(tmp_path, eos):
    tok = build_tokenizer()
    tok.eos_token = "<s>"  # a tokenizer whose eos is not the template's turn end
    setup = probes.eot_setup(_ckpt(tmp_path, eos), tok)
    (finding,) = probes.config_findings("cand", setup)
    assert "'<|end|>'" in finding and "not a stop token" in finding
    assert "Fix: add 2 to eos_token_id" in finding


def test_several_eos_ids_are_all_stops(tmp_path):
    tok = build_tokenizer()
    tok.eos_token = "<s>"
    setup = probes.eot_setup(_ckpt(tmp_path, [1, 2]), tok)
    assert setup.stop_ids == (1, 2)
    assert probes.config_findings("x", setup) == []


def _rec(item, finish, output="12"):
    return Record("t", item, "h", "p", "P:", "12", output, output, 1.0, "exact_match", "generate_until", finish)


def test_drift_requests_cover_items_that_stopped_on_eos_only():
    refs = [_rec("a", "eos"), _rec("b", "length"), _rec("c", "stop"), _rec("d", "eos", output="")]
    reqs = probes.drift_requests(refs, ["<|end|>", "<|eot|>"])
    assert [(r.context, r.continuation) for r in reqs] == [("P:", "12"), ("P:12", "<|end|>"), ("P:12", "<|eot|>")]


def test_drift_values_sum_eot_probabilities_and_average_answer_tokens():
    refs = [_rec("a", "eos")]
    answers = [Loglik(-3.0, True, 2), Loglik(math.log(0.25), False, 1), Loglik(math.log(0.5), False, 1)]
    ((key, (p_eot, per_tok)),) = probes.drift_values(refs, ["x", "y"], answers).items()
    assert key == ("t", "a")
    assert p_eot == pytest.approx(math.log(0.75))
    assert per_tok == pytest.approx(-1.5)


def test_termination_stats():
    gens = [
        Generation("ok", 3, "eos", None, (5, 6)),
        Generation("ab" * 40, 80, "length", None, tuple([7, 8] * 40)),
        Generation("x", 2, "eos", None, (9,)),
        Generation("cd" * 40, 80, "length", None, tuple([3, 4] * 40)),
    ]
    from harness.compare import termination_stats

    s = termination_stats(gens)
    assert s.n == 4 and s.stop_rate == 0.5 and s.nonterm_rate == 0.5
    assert s.loop_rate == 0.5
    assert s.length_max == 80 and s.lengths == (2, 3, 80, 80)
