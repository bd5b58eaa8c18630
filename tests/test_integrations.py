"""``RegressCallback`` on a real ``transformers.Trainer`` run (issue 24).

The demo base fine-tuned carelessly (the count skill alone, loss on every token, as
``harness/demo/build.py`` does for ft-all-tokens), saving every few steps, each save gated
by ``regress compare`` in its own process: one verdict per save in the trainer's log
history, and with ``stop_on_fail`` the run ends at the first FAILed checkpoint, the same
step ``regress trend`` names as the first FAIL on the same folders.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from torch.utils.data import Dataset
from transformers import LlamaForCausalLM, Trainer, TrainingArguments

from harness import checkpoint as ckpt
from harness.cli import main
from harness.demo.build import FT, FT_MIXES
from harness.demo.train import _batch
from harness.demo.world import Example, train_stream
from harness.errors import RegressError
from harness.integrations import RegressCallback

pytestmark = pytest.mark.slow

SLICE = {"tasks": "demo_add,demo_rev", "limit": 12}
SAVE_EVERY, MAX_STEPS, BATCH = 4, 40, 32


class _Examples(Dataset):  # type: ignore[type-arg]
    def __init__(self, n: int) -> None:
        stream = train_stream(FT_MIXES["ft-all-tokens"], FT["seed"])  # the count skill alone
        self.items = [next(stream) for _ in range(n)]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Example:
        return self.items[i]


def _trainer(base: Path, run: Path) -> Trainer:
    tok = ckpt.load_tokenizer(base)
    model = LlamaForCausalLM.from_pretrained(str(base))

    def collate(exs: list[Example]) -> dict:
        ids, att, labels = _batch(tok, exs, "all")  # the careless loss: every token of the transcript
        return {"input_ids": ids, "attention_mask": att, "labels": labels}

    args = TrainingArguments(
        output_dir=str(run), max_steps=MAX_STEPS, save_steps=SAVE_EVERY, logging_steps=SAVE_EVERY,
        per_device_train_batch_size=BATCH, learning_rate=FT["lr"], warmup_steps=FT["warmup"], seed=FT["seed"],
        save_only_model=True, use_cpu=True, report_to="none", remove_unused_columns=False, disable_tqdm=True,
        dataloader_num_workers=0,
    )  # fmt: skip
    return Trainer(model=model, args=args, train_dataset=_Examples(MAX_STEPS * BATCH), data_collator=collate,
                   processing_class=tok)  # fmt: skip


def test_callback_logs_one_verdict_per_save_and_stops_at_the_first_fail(demo, tmp_path, capsys):
    run, store = tmp_path / "run", tmp_path / "store"
    cb = RegressCallback(str(demo["base"]), store=str(store), stop_on_fail=True, **SLICE)  # type: ignore[arg-type]
    trainer = cb.attach(_trainer(demo["base"], run))
    trainer.train()

    saved = sorted(int(d.name.split("-")[1]) for d in run.glob("checkpoint-*"))
    logged = [e for e in trainer.state.log_history if "regress/verdict" in e]
    assert [e["step"] for e in logged] == saved  # one verdict per save
    levels = [e["regress/verdict_level"] for e in logged]
    assert [e["regress/verdict"] for e in logged] == [{"PASS": 0, "WARN": 1, "FAIL": 2}[v] for v in levels]
    for e in logged:
        assert {"regress/accuracy", "regress/nfr", "regress/nonterm", "regress/demo_add/accuracy",
                "regress/demo_rev/nfr", "regress/demo_rev/nonterm"} <= set(e)  # fmt: skip
    # stopped at the first FAIL: the last save, before the planned end
    assert levels[-1] == "FAIL" and "FAIL" not in levels[:-1]
    assert trainer.state.global_step == saved[-1] < MAX_STEPS
    assert levels[0] != "FAIL", "the first save should still pass: the test shows nothing otherwise"

    # `regress trend` on the same folders names the same step as the first FAIL
    out = tmp_path / "trend"
    argv = ["trend", "--base", str(demo["base"]), *map(str, sorted(run.glob("checkpoint-*"))), "--out", str(out),
            "--store", str(store), "--tasks", SLICE["tasks"], "--limit", str(SLICE["limit"])]  # fmt: skip
    assert main(argv) == 1
    points = json.loads((out / "trend.json").read_text())["points"]
    assert next(p["step"] for p in points if p["verdict"] == "FAIL") == trainer.state.global_step
    assert [p["verdict"] for p in points] == levels

    # the base was evaluated once for the whole run: one stored run of it, one per checkpoint
    fps = [json.loads(m.read_text())["fingerprint"] for m in store.glob("*/meta.json")]
    assert fps.count(ckpt.fingerprint(demo["base"])) == 1
    assert len(fps) == 1 + len(saved)
    # the callback's own trend report and state, which `regress watch` goes on from
    state = json.loads((run / "regress" / "watch.json").read_text())
    assert [p["step"] for p in state["points"]] == saved
    assert (run / "regress" / "trend.html").is_file()


def test_callback_must_be_attached_and_gates_through_a_server_when_given_one(demo, tmp_path):
    cb = RegressCallback(str(demo["base"]), base_url="http://127.0.0.1:8000/v1", limit=5)
    cmd = cb.command(tmp_path / "run" / "checkpoint-5", tmp_path / "out")
    assert cmd[:4] == [sys.executable, "-m", "harness.cli", "compare"]
    assert cmd[cmd.index("--backend") + 1] == "openai" and cmd[cmd.index("--limit") + 1] == "5"
    trainer = _trainer(demo["base"], tmp_path / "run")
    trainer.add_callback(cb)  # not attach(): no trainer to log through
    with pytest.raises(RegressError, match="attach"):
        trainer.train()
    assert not list((tmp_path / "run").glob("checkpoint-*"))
