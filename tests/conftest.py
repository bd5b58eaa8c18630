"""Shared fixtures: the real demo checkpoints (built once, cached) and a session store.

``demo`` builds (or reuses) the demo checkpoints under ``.cache/demo`` — the same cache
``make regress`` uses — so the first test session pays the ~4 minute build once.
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
def session_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("store")


@pytest.fixture(scope="session")
def base_ckpt(request: pytest.FixtureRequest) -> Path:
    """The demo base (REGRESS_TEST_BASE: any compatible checkpoint, for quick iterations)."""
    alt = os.environ.get("REGRESS_TEST_BASE")
    return Path(alt) if alt else request.getfixturevalue("demo")["base"]
