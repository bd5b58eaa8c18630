"""One engine for a base and every adapter of it, within one command.

``runner.evaluate`` asks ``load(name, checkpoint, options)`` for a backend when a request
is not in the store. Outside ``shared(...)`` that starts one, which the run closes. Inside
``shared(checkpoints)`` (``regress compare`` with one or many candidates, ``regress
trend``) an ``hf`` or ``vllm`` engine started for a model folder is kept and handed to the
next checkpoint on the same folder with that checkpoint's adapter switched on (hf: one
PEFT model, adapters loaded once each and switched; vllm: one engine started with LoRA
enabled up to the largest rank of the command's adapters, each request sent with the
adapter's ``LoRARequest``). A checkpoint on another folder, or other engine options,
closes it first: one engine holds the accelerator at a time.

``starts`` counts the engines started in this process (the tests count them).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

from harness.backends import load_backend
from harness.backends.base import Backend
from harness.config import BackendOptions
from harness.types import LoadedCheckpoint

SHARED_BACKENDS = ("hf", "vllm")  # the engines with ``use(checkpoint)``
starts = 0  # engines started in this process
_pool: _Pool | None = None


class _Lent:
    """A shared engine as one run sees it: every call goes to the engine; ``close`` keeps it."""

    def __init__(self, engine: Any) -> None:
        self._engine = engine

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    def close(self) -> None:
        pass  # the pool closes it


class _Pool:
    def __init__(self, checkpoints: Sequence[LoadedCheckpoint]) -> None:
        self.rank = max((c.adapter.rank for c in checkpoints if c.adapter is not None), default=0)
        self.key: tuple[str, str, BackendOptions] | None = None
        self.engine: Any = None

    def get(self, name: str, ck: LoadedCheckpoint, options: BackendOptions) -> Backend:
        if name not in SHARED_BACKENDS:
            return _start(name, ck, options, 0)
        key = (name, ck.model_path, options)
        if key == self.key:
            self.engine.use(ck)
        else:
            self.close()
            self.engine = _start(name, ck, options, self.rank if name == "vllm" else 0)
            self.key = key
        return _Lent(self.engine)  # type: ignore[return-value]

    def close(self) -> None:
        if self.engine is not None:
            engine, self.engine, self.key = self.engine, None, None
            engine.close()


def _start(name: str, ck: LoadedCheckpoint, options: BackendOptions, lora_rank: int) -> Backend:
    global starts
    backend = load_backend(name, ck, options, lora_rank)
    starts += 1
    return backend


def load(name: str, ck: LoadedCheckpoint, options: BackendOptions) -> Backend:
    """A backend answering as ``ck``: the shared engine inside ``shared``, else a new one."""
    return _pool.get(name, ck, options) if _pool is not None else _start(name, ck, options, 0)


@contextlib.contextmanager
def shared(checkpoints: Sequence[LoadedCheckpoint]) -> Iterator[None]:
    """Within the block, ``load`` hands out one engine per model folder (see the module)."""
    global _pool
    outer, _pool = _pool, _Pool(checkpoints)
    try:
        yield
    finally:
        pool, _pool = _pool, outer
        if pool is not None:
            pool.close()
