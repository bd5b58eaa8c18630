"""One validated configuration object per run, built at the CLI edge and passed down whole.

``BackendOptions`` holds what any backend may take (unset fields mean the backend's own
default); ``RunConfig`` names the checkpoint(s), suite, backend and output places.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class BackendOptions:
    batch_size: int | None = None
    dtype: str | None = None
    device: str | None = None
    max_model_len: int | None = None
    tensor_parallel_size: int = 1
    data_parallel_size: int = 1
    gpu_memory_utilization: float | None = None
    enforce_eager: bool | None = None
    base_urls: tuple[str, ...] = ()
    api_model: str | None = None
    concurrency: int = 16
    max_retries: int = 5
    trust_remote_code: bool = False
    chunk_size: int | None = None


@dataclass(frozen=True)
class RunConfig:
    suite: str
    backend: str = "hf"
    options: BackendOptions = field(default_factory=BackendOptions)
    store_dir: str = "baselines"
    limit: int | None = None
    # >0: a noise-floor rerun (its own store key; requests in reverse order, other batch size)
    noise_variant: int = 0
