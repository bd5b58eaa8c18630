"""Shared fixtures: the real demo checkpoints (built once, cached) and a session store.

``demo`` builds (or reuses) the demo checkpoints under ``.cache/demo`` — the same cache
``make regress`` uses — so the first test session pays the ~4 minute build once; ``planted``
adds the planted causes' fine-tunes beside them; ``smol`` the real demo's SmolLM2 (about a
minute) and ``real_lora`` LoRAs of it. ``real_slice`` writes a suite of some of suite real's tasks.
``session_store`` is one record store for the whole session, so a checkpoint evaluated
by one test is reused by the next (the baseline reuse regress itself relies on).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import pytest

T = TypeVar("T")

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")


FULL = "REGRESS_FULL_TESTS"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``full`` (issue-sized checks that take an hour or more on 2 CPU cores) run
    only with REGRESS_FULL_TESTS=1 (``make test-full``); otherwise each is skipped, saying so."""
    if os.environ.get(FULL) == "1":
        return
    skip = pytest.mark.skip(reason=f"full size, an hour or more on 2 CPU cores: {FULL}=1 (make test-full) runs it")
    for item in items:
        if "full" in item.keywords:
            item.add_marker(skip)


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


@pytest.fixture(scope="session")
def real_lora(smol: dict[str, Path]) -> dict[str, Path]:
    """A rank-8 LoRA of SmolLM2 trained with the real demo's careless recipe, its merged copy
    and its adapter after 5 of the 40 steps (``demo.lora.build_real_lora``: about a minute,
    built once under ``.cache/demo-lora-real``)."""
    from harness.demo.lora import build_real_lora

    return build_real_lora(smol["base"], REPO / ".cache" / "demo-lora-real")


# Tasks of suite real where the real demo's careless fine-tunes show their loss in 10 items
# (TruthfulQA generation: 7 of 10 right->wrong for the LoRA, measured), beside the new skill
# and a multiple-choice task.
SMOL_SLICE = ("real_veltan", "truthfulqa_gen", "arc_easy")


def real_slice(folder: Path, name: str, tasks: tuple[str, ...], probes: dict | None = None) -> Path:
    """``folder/name.yaml``: ``tasks`` of suite real as it runs them (its task folder, the
    chat template, the shared benchmarks), with ``probes`` only (none: the suite default)."""
    import yaml

    raw = {"name": name, "version": 1, "task_dirs": [str(REPO / "suites" / "real")], "chat_template": True,
           "data": str((REPO.parent / "shared" / "benchmarks").resolve()), "tasks": list(tasks)}  # fmt: skip
    if probes is not None:
        raw["probes"] = probes
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="session")
def smol_slice(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A suite of ``SMOL_SLICE`` as suite real runs them (chat template, drift probes, the
    shared benchmarks), without the termination probe: for SmolLM2 in every CI run."""
    return real_slice(tmp_path_factory.mktemp("smol-slice"), "real-slice", SMOL_SLICE, {"drift": True})


@pytest.fixture(scope="session")
def planted(demo: dict[str, Path]) -> dict[str, Path]:
    """The demo checkpoints and the planted causes' fine-tunes (``ft-early-eot``, ``ft-format``,
    ``ft-overwrite``), each built once from the demo base and cached beside it."""
    from harness.demo.early_eot import build_early_eot
    from harness.demo.planted import build_planted

    out = demo["base"].parent
    return {**demo, "ft-early-eot": build_early_eot(out),
            **{n: build_planted(out, n) for n in ("ft-format", "ft-overwrite")}}  # fmt: skip


def concurrently(*jobs: Callable[[], T], workers: int = 2) -> list[T]:
    """Each job's result, in order, the jobs run ``workers`` at a time in threads: for tests
    whose subprocesses (lm-eval, the CLI) spend most of their time importing on one core.
    The first job to raise raises here, after every job has ended."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(job) for job in jobs]
        return [f.result() for f in futures]


@pytest.fixture(scope="session")
def session_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("store")


@pytest.fixture(scope="session")
def base_ckpt(request: pytest.FixtureRequest) -> Path:
    """The demo base (REGRESS_TEST_BASE: any compatible checkpoint, for quick iterations)."""
    alt = os.environ.get("REGRESS_TEST_BASE")
    return Path(alt) if alt else request.getfixturevalue("demo")["base"]
