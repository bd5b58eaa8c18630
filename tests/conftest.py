"""Shared fixtures: the real demo checkpoints (built once, cached) and a session store.

``demo`` builds (or reuses) the demo checkpoints under ``.cache/demo`` — the same cache
``make regress`` uses — so the first test session pays the ~4 minute build once; ``smol``
the real demo's SmolLM2 (about a minute).
``session_store`` is one record store for the whole session, so a checkpoint evaluated
by one test is reused by the next (the baseline reuse regress itself relies on).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")


@pytest.fixture(scope="session")
def demo() -> dict[str, Path]:
    from harness.demo.build import build_demo

    return build_demo(REPO / ".cache" / "demo")


@pytest.fixture(scope="session")
def smol() -> dict[str, Path]:
    """The real demo's SmolLM2-135M-Instruct (converted from its PyPI GGUF) and its identical
    copy, built once under ``.cache/demo/real`` for every test module that needs it."""
    pytest.importorskip("gguf", reason="the real demo needs `pip install 'regress[real]'`")
    from harness.demo import real

    return real.build_real(REPO / ".cache" / "demo" / "real", fine_tunes=("ft-identical",))


# Tasks of suite real where the real demo's careless fine-tunes show their loss in 10 items
# (TruthfulQA generation: 7 of 10 right->wrong for the LoRA, measured), beside the new skill
# and a multiple-choice task.
SMOL_SLICE = ("real_veltan", "truthfulqa_gen", "arc_easy")


@pytest.fixture(scope="session")
def smol_slice(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A suite of ``SMOL_SLICE`` as suite real runs them (chat template, drift probes, the
    shared benchmarks), without the termination probe: for SmolLM2 in every CI run."""
    import yaml

    raw = {"name": "real-slice", "version": 1, "task_dirs": [str(REPO / "suites" / "real")], "chat_template": True,
           "data": str((REPO / "suites" / "../../shared/benchmarks").resolve()), "tasks": list(SMOL_SLICE),
           "probes": {"drift": True}}  # fmt: skip
    path = tmp_path_factory.mktemp("smol-slice") / "real-slice.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="session")
def session_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("store")


@pytest.fixture(scope="session")
def base_ckpt(request: pytest.FixtureRequest) -> Path:
    """The demo base (REGRESS_TEST_BASE: any compatible checkpoint, for quick iterations)."""
    alt = os.environ.get("REGRESS_TEST_BASE")
    return Path(alt) if alt else request.getfixturevalue("demo")["base"]
