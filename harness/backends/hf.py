"""The ``hf`` backend: transformers on CPU or GPU.

Greedy batched generation with left padding over length-sorted batches, the checkpoint's
end-of-turn ids (``ckpt.eot.stop_ids``) as eos, per-sequence stop strings, and
log-likelihoods for multiple choice computed the way lm-eval's ``HFLM`` computes them
(context/continuation split on the token boundary of the whole string), so per-item
scores match ``lm_eval --model hf``.

Its defaults (device, dtype, batch and chunk size) are resolved here, and so are the
settings of the store key (``output_settings``) and the noise floor's second run.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, ParamSpec, TypeVar

from harness.backends.base import (
    CheckpointBackend,
    CommonOptions,
    Done,
    cuda_available,
    cut_at_stop,
    fit_pairs,
    fit_prompts,
    split_pair,
)
from harness.errors import BackendError
from harness.options import option
from harness.types import Generation, GenRequest, LoadedCheckpoint, Loglik, LoglikRequest, StoreSettings

BATCH_SIZE = 64  # the batch size when none is given


@dataclass(frozen=True)
class HFOptions(CommonOptions):
    batch_size: int | None = option(None, at_least=1, help="prompts per batch (hf)")
    device: str | None = option(None, help="torch device: cpu, cuda, cuda:1 (hf)")


Opts = TypeVar("Opts", bound=HFOptions)
P = ParamSpec("P")
R = TypeVar("R")


def _inference(fn: Callable[P, R]) -> Callable[P, R]:
    """``torch.inference_mode()`` as a decorator, with torch imported when first called."""

    @functools.wraps(fn)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        import torch

        with torch.inference_mode():
            return fn(*args, **kwargs)

    return run


# -- defaults and the store key ---------------------------------------------------------


def context_length(config: Any) -> int:
    """The model's context, read from its config as lm-eval's HF model and vLLM read it (a
    longer prompt is cut from the left, as lm-eval does); a config without one: no cut."""
    for attr in ("n_positions", "max_position_embeddings", "n_ctx"):  # lm-eval's order
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return sys.maxsize


def resolve_device(options: HFOptions) -> str:
    return options.device or ("cuda" if cuda_available() else "cpu")


def resolve_dtype(options: HFOptions, device: str) -> str:
    """The dtype weights are loaded in: float32 on CPU, the checkpoint's own elsewhere."""
    if options.dtype in (None, "auto"):
        return "float32" if device.partition(":")[0] == "cpu" else "auto"
    return options.dtype


def resolve_batching(options: HFOptions) -> tuple[int, int]:
    """(batch size, chunk size): each chunk is sorted by length and batched within, so
    both decide which prompts are padded together."""
    batch = options.batch_size or BATCH_SIZE
    return batch, options.chunk_size or max(batch * 4, 256)


def accelerator(options: HFOptions) -> str:
    """What computes the answers: the GPU's name, "cpu", "mps", ... Two cards (or a card and
    a CPU) give different float noise, so a base stored on one is not reused for a
    candidate run on another; the card is named, not the index it is reached by."""
    kind, _, index = resolve_device(options).partition(":")
    if kind != "cuda":
        return kind
    if not cuda_available():
        return "cpu"
    import torch

    return torch.cuda.get_device_name(int(index) if index.isdigit() else 0)  # the backend initialises CUDA anyway


def output_settings(options: HFOptions) -> StoreSettings:
    accel = accelerator(options)
    batch, chunk = resolve_batching(options)
    dtype = resolve_dtype(options, resolve_device(options))
    return {"accelerator": accel, "dtype": dtype, "batch_size": batch, "chunk_size": chunk}


def rerun_options(options: Opts) -> tuple[Opts, tuple[int, int]]:
    """The noise floor's second run: another batch size, so other prompts share a batch."""
    batch = resolve_batching(options)[0]
    second = max(1, batch // 4 + 1)
    return replace(options, batch_size=second), (batch, second)


def import_engine() -> object:
    import transformers

    return transformers


# -- the backend ------------------------------------------------------------------------


class HFBackend(CheckpointBackend):
    def __init__(self, ckpt: LoadedCheckpoint, options: HFOptions) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        super().__init__(ckpt, options)
        self.device = resolve_device(options)
        dtype = resolve_dtype(options, self.device)
        torch_dtype: Any = "auto" if dtype == "auto" else getattr(torch, dtype)
        try:
            self.model = AutoModelForCausalLM.from_pretrained(
                ckpt.model_path,
                dtype=torch_dtype,
                local_files_only=True,
                trust_remote_code=options.trust_remote_code,
            ).to(self.device)  # type: ignore[arg-type]  # transformers' decorator typing
        except (OSError, ValueError, RuntimeError) as e:
            raise BackendError(f"cannot load model weights from {ckpt.model_path}: {str(e).splitlines()[0]}") from e
        self.model.eval()
        self.active: str | None = None  # the PEFT adapter answering (None: the model alone)
        self.use(ckpt)
        self.max_len = context_length(self.model.config)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eot[0]
        self.batch_size, self.chunk_size = resolve_batching(options)
        self.fixed_chunks = True  # a chunk is sorted by length and batched within: keyed
        self.calls = 0  # backend calls, counted for the baseline-reuse tests

    def close(self) -> None:
        del self.model

    def use(self, ck: LoadedCheckpoint) -> None:
        """Answer as ``ck`` from now on: its PEFT adapter over the loaded model (each adapter
        loaded once, never merged), or the model alone; one model serves a base and every
        adapter of it (``harness.engines``)."""
        self.checkpoint, self.tokenizer, self.eot = ck.path, ck.tokenizer, ck.eot.stop_ids
        self.active = None if ck.adapter is None else f"a{ck.fingerprint}"
        if self.active is None:
            return
        from peft import PeftModel

        try:
            if not isinstance(self.model, PeftModel):
                self.model = PeftModel.from_pretrained(self.model, ck.path, adapter_name=self.active).eval()
            elif self.active not in self.model.peft_config:
                self.model.load_adapter(ck.path, adapter_name=self.active)
        except (OSError, ValueError, RuntimeError, KeyError) as e:
            raise BackendError(f"peft cannot load adapter {ck.path}: {str(e).splitlines()[0]}") from e
        self.model.set_adapter(self.active)

    def _answering(self) -> Any:
        """The context a call runs in: a PEFT model with its adapters off for the model alone."""
        if self.active is None and hasattr(self.model, "disable_adapter"):
            return self.model.disable_adapter()
        return contextlib.nullcontext()

    # -- generation -------------------------------------------------------------------

    def generate(self, requests: Sequence[GenRequest], on_done: Done | None = None) -> list[Generation]:
        with self._answering():
            return self._generate(requests, on_done)

    def _generate(self, requests: Sequence[GenRequest], on_done: Done | None) -> list[Generation]:
        self.calls += 1
        out: list[Generation | None] = [None] * len(requests)
        groups: dict[tuple[tuple[str, ...], int], list[int]] = defaultdict(list)
        for i, r in enumerate(requests):
            groups[(r.stop, r.max_tokens)].append(i)
        encoded = fit_prompts([self.encode(r.prompt) for r in requests], [r.max_tokens for r in requests], self.max_len)
        for (stop, max_tokens), idx in groups.items():
            idx.sort(key=lambda i: -len(encoded[i]))
            for s in range(0, len(idx), self.batch_size):
                batch = idx[s : s + self.batch_size]
                gens = self._generate_batch([encoded[i] for i in batch], stop, max_tokens)
                for i, g in zip(batch, gens):
                    out[i] = g
                if on_done is not None:
                    on_done(batch, gens)
        return [g for g in out if g is not None]

    @_inference
    def _generate_batch(self, prompts: list[list[int]], stop: tuple[str, ...], max_tokens: int) -> list[Generation]:
        import torch

        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        att = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, width - len(p) :] = torch.tensor(p)
            att[i, width - len(p) :] = 1
        kwargs: dict[str, Any] = {}
        if stop:
            kwargs = {"stop_strings": list(stop), "tokenizer": self.tokenizer}
        # an answer ends where the model's context does (as vLLM's do) when the budget reaches past it
        budgets = [min(max_tokens, self.max_len - len(p)) for p in prompts]
        gen = self.model.generate(
            input_ids=ids.to(self.device),
            attention_mask=att.to(self.device),
            max_new_tokens=max(budgets),
            do_sample=False,
            eos_token_id=list(self.eot),
            pad_token_id=self.pad_id,
            **kwargs,
        )[:, width:].tolist()
        return [self._finish(row[:budget], stop) for row, budget in zip(gen, budgets)]

    def _finish(self, row: list[int], stop: tuple[str, ...]) -> Generation:
        eot = set(self.eot)
        cut = next((k for k, t in enumerate(row) if t in eot), None)
        toks = row if cut is None else row[:cut]
        if cut is None and self.pad_id not in eot:
            # a row finished by a stop string is filled with pad ids while the batch runs on
            while toks and toks[-1] == self.pad_id:
                toks = toks[:-1]
        text = self.tokenizer.decode(toks, skip_special_tokens=True)
        text, hit = cut_at_stop(text, stop)
        if hit is not None:
            return Generation(text, len(toks), "stop", hit, tuple(toks))
        if cut is not None:
            reason = self.tokenizer.decode([row[cut]], skip_special_tokens=False)
            return Generation(text, cut + 1, "eos", reason, tuple(toks))
        return Generation(text, len(toks), "length", None, tuple(toks))

    # -- log-likelihood ---------------------------------------------------------------

    def loglikelihood(self, requests: Sequence[LoglikRequest]) -> list[Loglik]:
        with self._answering():
            return self._loglikelihood(requests)

    def _loglikelihood(self, requests: Sequence[LoglikRequest]) -> list[Loglik]:
        self.calls += 1
        whole = [split_pair(self.encode, r.context, r.continuation, self.bos_id()) for r in requests]
        pairs = fit_pairs(whole, self.max_len + 1, self.max_len)
        order = sorted(range(len(pairs)), key=lambda i: -(len(pairs[i][0]) + len(pairs[i][1])))
        out: list[Loglik | None] = [None] * len(pairs)
        for s in range(0, len(order), self.batch_size):
            batch = order[s : s + self.batch_size]
            for i, r in zip(batch, self._loglik_batch([pairs[i] for i in batch])):
                out[i] = r
        return [r for r in out if r is not None]

    @_inference
    def _loglik_batch(self, pairs: list[tuple[list[int], list[int]]]) -> list[Loglik]:
        import torch

        seqs = [(c + k)[:-1] for c, k in pairs]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        att = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s)
            att[i, : len(s)] = 1
        logits = self.model(input_ids=ids.to(self.device), attention_mask=att.to(self.device)).logits
        logp = torch.log_softmax(logits.float(), dim=-1).cpu()
        res = []
        for i, (c, k) in enumerate(pairs):
            start = len(c) - 1
            lp = logp[i, start : start + len(k)]
            target = torch.tensor(k)
            total = float(lp.gather(1, target[:, None]).sum())
            greedy = bool((lp.argmax(-1) == target).all())
            res.append(Loglik(total, greedy, len(k)))
        return res
