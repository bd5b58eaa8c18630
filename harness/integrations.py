"""Gate a run from inside its trainer: ``RegressCallback``, a ``transformers.TrainerCallback``.

After each save (``on_save``) it gates the new checkpoint against the base in a separate
process (``python -m harness.cli compare ...`` with the trainer's own interpreter), so the
trainer's memory and CUDA context are never shared with the evaluation. On one GPU that
process uses the ``hf`` backend beside the trainer, or a server given with ``base_url``.

The verdict and its numbers go through the trainer's own ``log`` (so W&B, MLflow or
TensorBoard receive them as ``report_to`` says): ``regress/verdict`` (0 pass, 1 warn,
2 fail), ``regress/accuracy``, ``regress/nfr``, ``regress/nonterm`` and the same per task
(``regress/<task>/accuracy`` ...). The verdict's word (``PASS``) is added to that entry of
``trainer.state.log_history`` as ``regress/verdict_level`` (saved in the next
checkpoint's trainer_state.json) and printed. With ``stop_on_fail=True`` the first FAIL sets
``control.should_training_stop``: that checkpoint is the run's last.

Each checkpoint's report is written under ``out/checkpoint-N/`` (default
``OUTPUT_DIR/regress``) and the run's trend report in ``out`` after each, in the state file
``regress watch`` keeps: a watch started on the same folders goes on from it.

    trainer = SFTTrainer(model=..., args=SFTConfig(output_dir="run", save_steps=50), ...)
    RegressCallback("base-model/", tasks="gsm8k,arc_easy", limit=200, stop_on_fail=True).attach(trainer)
    trainer.train()
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from harness.errors import RegressError
from harness.trend import TrendPoint
from harness.watch import load_state, metrics_of, point_from_summary, record

log = logging.getLogger(__name__)


class RegressCallback(TrainerCallback):
    """Gate each saved checkpoint against ``base``; see the module's docstring.

    ``suite``/``tasks``/``limit``/``backend``/``base_url``/``store``/``policy`` are
    ``regress compare``'s options (``base_url`` alone means ``backend="openai"``); ``extra_args``
    any others (``["--batch-size", "16"]``).
    """

    def __init__(
        self,
        base: str,
        *,
        suite: str | None = None,
        tasks: str | None = None,
        limit: int | None = None,
        backend: str | None = None,
        base_url: str | None = None,
        store: str | None = None,
        policy: str | None = None,
        out: str | None = None,
        stop_on_fail: bool = False,
        extra_args: Sequence[str] = (),
        python: str = sys.executable,
    ) -> None:
        self.base = base
        self.out = out
        self.stop_on_fail = stop_on_fail
        self.python = python
        backend = backend or ("openai" if base_url else "hf")  # a server given: gate through it
        opts = {"--suite": suite, "--tasks": tasks, "--limit": limit, "--backend": backend,
                "--base-url": base_url, "--store": store, "--policy": policy}  # fmt: skip
        self.options = [s for k, v in opts.items() if v is not None for s in (k, str(v))] + list(extra_args)
        self.trainer: Any = None
        self.points: list[TrendPoint] = []  # this process's verdicts, in order

    def attach(self, trainer: Any) -> Any:
        """Add this callback to ``trainer`` and log through it; returns the trainer."""
        self.trainer = trainer
        trainer.add_callback(self)
        return trainer

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any) -> None:
        if self.trainer is None:
            raise RegressError("RegressCallback logs through its trainer: add it with callback.attach(trainer)")

    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> TrainerControl:
        if not state.is_world_process_zero:
            return control
        ckpt = Path(args.output_dir or ".") / f"checkpoint-{state.global_step}"
        point = self.gate(ckpt, state.global_step, self.out_dir(args))
        self.points.append(point)
        self.trainer.log(metrics_of(point))
        last: dict[str, Any] = state.log_history[-1] if state.log_history else {}
        if "regress/verdict" in last:
            last["regress/verdict_level"] = point.verdict
        print(f"regress: step {state.global_step} {point.verdict}: {ckpt}", file=sys.stderr, flush=True)
        if self.stop_on_fail and point.verdict == "FAIL":
            control.should_training_stop = True
        return control

    def out_dir(self, args: TrainingArguments) -> Path:
        return Path(self.out) if self.out else Path(args.output_dir or ".") / "regress"

    def command(self, ckpt: Path, out: Path) -> list[str]:
        """The ``regress compare`` command that gates ``ckpt`` into ``out``."""
        return [self.python, "-m", "harness.cli", "compare", "--base", self.base, "--model", str(ckpt),
                "--out", str(out), *self.options]  # fmt: skip

    def gate(self, ckpt: Path, step: int, out: Path) -> TrendPoint:
        """Run ``regress compare`` in its own process; record the point in the watch state."""
        proc = subprocess.run(self.command(ckpt, out / ckpt.name), capture_output=True, text=True, check=False)
        if proc.returncode not in (0, 1):
            why = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
            raise RegressError(f"gating {ckpt} failed: {why}")
        summary = json.loads((out / ckpt.name / "summary.json").read_text())
        point = point_from_summary(summary, str(ckpt), step)
        state = load_state(out, str(Path(self.base).resolve()), str(summary["suite"]["name"]))
        record(out, state, point)
        return point
