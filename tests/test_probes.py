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


# generation_config.json (None: no file; a str: the file's text) and config.json's eos ->
# the stop ids, as transformers sets model.generation_config when it loads the model
GENERATION_EOS_CASES = [
    ({"eos_token_id": 2}, [1, 2], (2,)),
    ({"eos_token_id": [1, 2]}, 2, (1, 2)),
    ({"eos_token_id": [2, 2]}, 2, (2, 2)),  # kept as written: the drift probe scores each
    ({"pad_token_id": 0}, [1, 2], (2,)),  # the file is read, config.json is not
    (None, [1, 2], (1, 2)),  # no file: derived from config.json
    ("{not json", [1, 2], (1, 2)),  # unreadable: as missing
    (None, None, (2,)),  # neither: the tokenizer's eos
]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = build_tokenizer()
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=1, num_key_value_heads=1, eos_token_id=tok.eos_token_id)  # fmt: skip
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny")
    LlamaForCausalLM(cfg).save_pretrained(str(path))
    return path


@pytest.mark.parametrize("generation_config,config_eos,want", GENERATION_EOS_CASES)
def test_stop_ids_are_those_the_model_loads_with(tiny_model, tmp_path, generation_config, config_eos, want):
    import shutil

    from transformers import AutoModelForCausalLM

    path = tmp_path / "m"
    shutil.copytree(tiny_model, path)
    config = json.loads((path / "config.json").read_text())
    config["eos_token_id"] = config_eos
    (path / "config.json").write_text(json.dumps(config))
    gc = path / "generation_config.json"
    if generation_config is None:
        gc.unlink()
    else:
        gc.write_text(generation_config if isinstance(generation_config, str) else json.dumps(generation_config))
    tok = build_tokenizer()
    setup = probes.eot_setup(path, tok)
    assert setup.stop_ids == want
    # the ids the hf backend stopped on before it took the loaded checkpoint's
    eos = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True).generation_config.eos_token_id
    loaded = [x for x in (eos if isinstance(eos, list) else [eos]) if x is not None] + [tok.eos_token_id]
    assert list(dict.fromkeys(setup.stop_ids)) == list(dict.fromkeys(loaded))


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
