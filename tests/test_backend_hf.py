"""The hf backend on the demo base: finish reasons and token counts in mixed batches."""

from __future__ import annotations

import pytest

from harness.backends.hf import HFBackend
from harness.config import BackendOptions
from harness.types import GenRequest


@pytest.fixture(scope="module")
def hf(demo):
    return HFBackend(str(demo["base"]), BackendOptions(batch_size=8))


def _prompt(hf, q):
    return hf.apply_chat_template([{"role": "user", "content": q}])


def test_rows_stopped_by_a_stop_string_carry_no_padding(hf):
    # "9" stops some answers mid-way while others in the same batch run on to eos
    qs = ["what is 45+49?", "reverse abcdef", "what is 11+12?", "sort 9876", "what is 90+9?", "reverse zyx"]
    gens = hf.generate([GenRequest(_prompt(hf, q), ("9",), 16) for q in qs])
    stopped = [g for g in gens if g.finish == "stop"]
    assert stopped and any(g.finish == "eos" for g in gens)
    for g in stopped:
        assert hf.pad_id not in g.token_ids
        assert g.n_tokens == len(g.token_ids)
        assert "9" not in g.text and hf.tokenizer.decode(list(g.token_ids)).endswith("9")


def test_eos_and_length(hf):
    eos, length = hf.generate(
        [GenRequest(_prompt(hf, "what is 12+34?"), (), 16), GenRequest(_prompt(hf, "reverse abcdef"), (), 3)]
    )
    assert eos.finish == "eos" and eos.text == "46" and eos.n_tokens == 3 and eos.stop_reason == "<|end|>"
    assert length.finish == "length" and length.n_tokens == 3 and length.text == "fed"
