"""The hf backend on the demo base: finish reasons and token counts in mixed batches; it
stops on the loaded checkpoint's end-of-turn ids and uses its tokenizer, loaded once."""

from __future__ import annotations

import dataclasses

import pytest

from harness import checkpoint
from harness.backends import load_backend
from harness.backends.hf import HFBackend
from harness.config import BackendOptions
from harness.types import GenRequest


@pytest.fixture(scope="module")
def base(demo):
    return checkpoint.load(demo["base"])


@pytest.fixture(scope="module")
def hf(base):
    return HFBackend(base, BackendOptions(batch_size=8))


def _prompt(tokenizer, q):
    return tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)


def test_rows_stopped_by_a_stop_string_carry_no_padding(hf):
    # "9" stops some answers mid-way while others in the same batch run on to eos
    qs = ["what is 45+49?", "reverse abcdef", "what is 11+12?", "sort 9876", "what is 90+9?", "reverse zyx"]
    gens = hf.generate([GenRequest(_prompt(hf.tokenizer, q), ("9",), 16) for q in qs])
    stopped = [g for g in gens if g.finish == "stop"]
    assert stopped and any(g.finish == "eos" for g in gens)
    for g in stopped:
        assert hf.pad_id not in g.token_ids
        assert g.n_tokens == len(g.token_ids)
        assert "9" not in g.text and hf.tokenizer.decode(list(g.token_ids)).endswith("9")


def test_eos_and_length(hf):
    eos, length = hf.generate(
        [
            GenRequest(_prompt(hf.tokenizer, "what is 12+34?"), (), 16),
            GenRequest(_prompt(hf.tokenizer, "reverse abcdef"), (), 3),
        ]
    )
    assert eos.finish == "eos" and eos.text == "46" and eos.n_tokens == 3 and eos.stop_reason == "<|end|>"
    assert length.finish == "length" and length.n_tokens == 3 and length.text == "fed"


def test_stops_on_the_loaded_checkpoints_ids_with_its_tokenizer(base, monkeypatch):
    """The end-of-turn ids are the loaded checkpoint's (``eot.stop_ids``), not read again
    from the folder, and the tokenizer is the one loaded with it."""
    import transformers

    def no_second_load(*args, **kwargs):
        raise AssertionError("the backend loaded the tokenizer again")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", no_second_load)
    four = base.tokenizer.convert_tokens_to_ids("4")
    eot = dataclasses.replace(base.eot, generation_eos_ids=(four,))  # "4" ends a turn too
    b = load_backend("hf", dataclasses.replace(base, eot=eot), BackendOptions())
    try:
        assert b.tokenizer is base.tokenizer
        (g,) = b.generate([GenRequest(_prompt(base.tokenizer, "what is 12+34?"), (), 16)])
        assert (g.finish, g.stop_reason, g.text, g.n_tokens) == ("eos", "4", "", 1)
    finally:
        b.close()


def test_a_prompt_longer_than_the_context_is_cut_from_the_left_as_lm_eval_does(hf, caplog):
    from harness.errors import BackendError
    from harness.types import LoglikRequest

    limit = hf.model.config.max_position_embeddings
    assert hf.max_len == limit
    digits = "".join(str(i % 10) for i in range(limit + 100))  # one token per digit
    assert len(hf.encode(digits)) == limit + 100
    # generation: the prompt's last limit - max_tokens tokens, as lm-eval's HF model cuts it
    with caplog.at_level("WARNING", logger="harness.backends.base"):
        cut, whole = hf.generate([GenRequest(digits, (), 8), GenRequest(digits[-(limit - 8) :], (), 8)])
    assert cut == whole and cut.n_tokens == 8
    assert "1 of 2 requests were longer than the model's 512-token context" in caplog.text
    # a budget past the context: the answer ends where the context does
    short = hf.generate([GenRequest("12", (), limit + 50)])[0]
    assert short.finish == "length" and short.n_tokens == limit - 2
    # log-likelihood: the last limit + 1 tokens of context and continuation (the input is all but the last)
    (a, b) = hf.loglikelihood([LoglikRequest(digits, "12"), LoglikRequest(digits[-(limit - 1) :], "12")])
    assert a == b and a.n_tokens == 2
    with pytest.raises(BackendError, match=rf"^a continuation of {limit + 1} tokens does not fit the model's {limit}"):
        hf.loglikelihood([LoglikRequest("1", digits[: limit + 1])])
