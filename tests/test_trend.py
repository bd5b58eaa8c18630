"""How ``regress trend`` orders checkpoints: by training step where the names carry one."""

from __future__ import annotations

import pytest

from harness.trend import steps_of


@pytest.mark.parametrize(
    ("paths", "steps", "by_step"),
    [
        (["run/checkpoint-1000", "run/checkpoint-500"], [1000, 500], True),
        (["a/step_3_ema", "b/step_12_ema"], [3, 12], True),
        (["checkpoint-500", "checkpoint-1000", "final"], [0, 1, 2], False),
        (["checkpoint-500", "checkpoint-1000", "llama3-8b-sft"], [0, 1, 2], False),  # 8 is no step
        (["ckpt-v2-100", "ckpt-v3-100"], [0, 1], False),  # two runs (v2, v3), not two steps of one
        (["final"], [0], False),
    ],
)
def test_steps_come_from_names_alike_but_for_the_last_number(paths, steps, by_step):
    assert steps_of(paths) == (steps, by_step)
