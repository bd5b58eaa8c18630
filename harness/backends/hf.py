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
import os
import sys
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, ParamSpec, TypeVar

from harness.backends.base import (
    LEAD,
    CheckpointBackend,
    CommonOptions,
    Done,
    Forced,
    covering,
    cuda_available,
    cut_at_stop,
    fit_pairs,
    fit_prompts,
    split_pair,
)
from harness.drafts import Check, threshold_for
from harness.errors import BackendError
from harness.options import option
from harness.types import Generation, GenRequest, LoadedCheckpoint, Loglik, LoglikRequest, StoreSettings

CPU_SHARE = 16  # on CPU a batch may take 1/16 of the machine's memory class (1 GiB of 16-31 GiB)
GPU_SHARE = 0.5  # on a GPU, half of what the weights leave of the card's memory class
MIN_BUDGET = 64 << 20  # bytes: never plan batches smaller than this


@dataclass(frozen=True)
class HFOptions(CommonOptions):
    batch_size: int | None = option(None, at_least=1, help="prompts per batch (hf; default: sized by memory)")
    batch_memory_mib: int | None = option(
        None, at_least=1, help="memory per batch in MiB (hf; default: by the machine's memory)"
    )
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


def memory_class(device: str) -> int:
    """The device's total memory rounded down to a power of two (bytes): what sizes batches.

    Total, not free memory: it is the same from run to run on one machine, so batches (which
    prompts are padded together, part of the store key) are too; a batch that does not fit
    after all is halved when it fails (``HFBackend._run``)."""
    kind, _, index = device.partition(":")
    if kind == "cuda" and cuda_available():
        import torch

        total = torch.cuda.get_device_properties(int(index) if index.isdigit() else 0).total_memory
    else:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return 1 << max(int(total).bit_length() - 1, 0)


def resolve_batching(options: HFOptions) -> tuple[int | None, int, int]:
    """(batch size or None, chunk size, batch memory budget in bytes). With ``--batch-size`` a
    batch is that many prompts; else batches are filled up to the memory budget by their real
    padded length (``BatchCost``). Each chunk is sorted by length and batched within, so all
    three decide which prompts are padded together."""
    device = resolve_device(options)
    if options.batch_memory_mib:
        budget = options.batch_memory_mib << 20
    elif device.partition(":")[0] == "cuda":
        budget = int(memory_class(device) * GPU_SHARE)  # the weights are taken off at start
    else:
        budget = memory_class(device) // CPU_SHARE
    chunk = options.chunk_size or max(4 * (options.batch_size or 0), 256)
    return options.batch_size, chunk, max(budget, MIN_BUDGET)


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
    batch, chunk, budget = resolve_batching(options)
    dtype = resolve_dtype(options, resolve_device(options))
    size: StoreSettings = {"batch_size": batch} if batch else {"batch_memory_mib": budget >> 20}
    return {"accelerator": accel, "dtype": dtype, **size, "chunk_size": chunk}


def rerun_options(options: Opts) -> tuple[Opts, tuple[int, int] | None]:
    """The noise floor's second run: other batches (another batch size, or a third of the
    memory budget), so other prompts share a batch."""
    batch, _, budget = resolve_batching(options)
    if batch is None:
        return replace(options, batch_memory_mib=max(1, (budget >> 20) // 3)), None
    second = max(1, batch // 4 + 1)
    return replace(options, batch_size=second), (batch, second)


def import_engine() -> object:
    import transformers

    return transformers


# -- batches sized by memory ------------------------------------------------------------


@dataclass(frozen=True)
class BatchCost:
    """What one row of a batch costs in memory, from the model's config (an estimate).

    Per token of its padded length (prompt + new tokens): the KV cache of every layer and one
    layer's activations; per row: one layer's attention scores over its length and the
    logits (all positions when scoring, the last one when generating), in float32."""

    per_token: int
    heads: int
    vocab: int

    @classmethod
    def of(cls, config: Any, dtype_bytes: int) -> BatchCost:
        hidden = int(getattr(config, "hidden_size", 0) or getattr(config, "n_embd", 0) or 1024)
        layers = int(getattr(config, "num_hidden_layers", 0) or getattr(config, "n_layer", 0) or 24)
        heads = int(getattr(config, "num_attention_heads", 0) or getattr(config, "n_head", 0) or 16)
        kv_heads = int(getattr(config, "num_key_value_heads", 0) or heads)
        inner = int(getattr(config, "intermediate_size", 0) or 4 * hidden)
        head_dim = int(getattr(config, "head_dim", 0) or hidden // heads)
        kv = 2 * layers * kv_heads * head_dim * dtype_bytes
        return cls(kv + dtype_bytes * (4 * hidden + 3 * inner), heads, int(getattr(config, "vocab_size", 0) or 0))

    def generate(self, prompt: int, new: int) -> int:
        length = prompt + new
        return length * self.per_token + 4 * (self.heads * prompt * length + 3 * self.vocab)

    def score(self, length: int) -> int:
        return length * (self.per_token + 4 * self.heads * length + 12 * self.vocab)


def plan_batches(costs: Sequence[int], budget: int) -> list[tuple[int, int]]:
    """(start, end) of consecutive batches over rows sorted longest first, where ``costs[i]`` is
    what row ``i`` costs padded to the batch's first (longest) row: each batch takes rows while
    its rows times its first row's cost fit ``budget`` (at least one row)."""
    out, s = [], 0
    while s < len(costs):
        n = max(1, budget // max(costs[s], 1))
        out.append((s, min(len(costs), s + n)))
        s += n
    return out


def out_of_memory(e: BaseException) -> bool:
    import torch

    return isinstance(e, (torch.OutOfMemoryError, MemoryError)) or (
        isinstance(e, RuntimeError) and ("out of memory" in str(e) or "can't allocate memory" in str(e))
    )


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
        self.draft_threshold = threshold_for(str(self.model.dtype))
        self.active: str | None = None  # the PEFT adapter answering (None: the model alone)
        self.use(ckpt)
        self.max_len = context_length(self.model.config)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eot[0]
        self.batch_size, self.chunk_size, self.budget = resolve_batching(options)
        if self.batch_size is None and self.device.partition(":")[0] == "cuda" and not options.batch_memory_mib:
            weights = sum(p.numel() * p.element_size() for p in self.model.parameters())
            self.budget = max(MIN_BUDGET, int((2 * self.budget - weights) * GPU_SHARE))
        self.cost = BatchCost.of(self.model.config, next(self.model.parameters()).element_size())
        self._criteria: dict[tuple[str, ...], Any] = {}
        self.halved = 0  # batches that ran out of memory and were run in halves
        self.fixed_chunks = True  # a chunk is sorted by length and batched within: keyed
        self.calls = 0  # backend calls, counted for the baseline-reuse tests

    def batching(self) -> dict[str, int | None]:
        """What sized this backend's batches, for the run's meta and progress."""
        return {"batch_size": self.batch_size, "batch_memory_mib": self.budget >> 20, "halved": self.halved}

    def _batches(self, rows: list[int], cost: Callable[[int], int]) -> list[list[int]]:
        """``rows`` (sorted longest first) cut into batches: ``--batch-size`` rows each, else
        by the memory budget and each batch's padded length."""
        if self.batch_size:
            return [rows[s : s + self.batch_size] for s in range(0, len(rows), self.batch_size)]
        return [rows[a:b] for a, b in plan_batches([cost(i) for i in rows], self.budget)]

    def _run(self, fn: Callable[[list[int]], list[Any]], batch: list[int]) -> list[Any]:
        """``fn(batch)``, and where it runs out of memory, each half of it in turn (halving
        again as needed); what finished before is kept by the caller."""
        try:
            return fn(batch)
        except Exception as e:
            if not out_of_memory(e) or len(batch) == 1:
                raise
        self.halved += 1
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        half = len(batch) // 2
        return self._run(fn, batch[:half]) + self._run(fn, batch[half:])

    def close(self) -> None:
        del self.model

    def use(self, ck: LoadedCheckpoint) -> None:
        """Answer as ``ck`` from now on: its PEFT adapter over the loaded model (each adapter
        loaded once, never merged), or the model alone; one model serves a base and every
        adapter of it (``harness.engines``)."""
        self.checkpoint, self.tokenizer, self.eot = ck.path, ck.tokenizer, ck.eot.stop_ids
        self.forced = {}  # kept passes were another checkpoint's
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
        self.calls += 1
        with self._answering():
            return self._generate(requests, [()] * len(requests), on_done)

    def resume(
        self, requests: Sequence[GenRequest], prefixes: Sequence[tuple[int, ...]], on_done: Done | None = None
    ) -> list[Generation]:
        """Each request's greedy answer given that it starts with its prefix (drafting): the
        prefix is fed after the prompt and generation goes on within the rest of the same
        budget, under the same stop rules; the answer is prefix + what follows, as one."""
        self.calls += 1
        with self._answering():
            return self._generate(requests, prefixes, on_done)

    def _prompts(self, requests: Sequence[GenRequest]) -> list[list[int]]:
        return fit_prompts([self.encode(r.prompt) for r in requests], [r.max_tokens for r in requests], self.max_len)

    def _generate(
        self, requests: Sequence[GenRequest], prefixes: Sequence[tuple[int, ...]], on_done: Done | None
    ) -> list[Generation]:
        out: list[Generation | None] = [None] * len(requests)
        groups: dict[tuple[tuple[str, ...], int], list[int]] = defaultdict(list)
        for i, r in enumerate(requests):
            groups[(r.stop, r.max_tokens)].append(i)
        fed = [p + list(x) for p, x in zip(self._prompts(requests), prefixes)]
        for (stop, max_tokens), idx in groups.items():
            idx.sort(key=lambda i: -len(fed[i]))
            cost = functools.partial(self._gen_cost, fed, max_tokens)
            run = functools.partial(self._generate_rows, fed, prefixes, stop, max_tokens)
            for batch in self._batches(idx, cost):
                gens = self._run(run, batch)
                for i, g in zip(batch, gens):
                    out[i] = g
                if on_done is not None:
                    on_done(batch, gens)
        return [g for g in out if g is not None]

    def _gen_cost(self, fed: list[list[int]], max_tokens: int, i: int) -> int:
        return self.cost.generate(len(fed[i]), max_tokens)

    def _generate_rows(
        self,
        fed: list[list[int]],
        prefixes: Sequence[tuple[int, ...]],
        stop: tuple[str, ...],
        max_tokens: int,
        rows: list[int],
    ) -> list[Generation]:
        return self._generate_batch([fed[i] for i in rows], stop, max_tokens, [prefixes[i] for i in rows])

    @_inference
    def _generate_batch(
        self, prompts: list[list[int]], stop: tuple[str, ...], max_tokens: int, prefixes: list[tuple[int, ...]]
    ) -> list[Generation]:
        ids, att = self._padded(prompts, left=True)
        width = ids.shape[1]
        kwargs: dict[str, Any] = {}
        if stop:
            kwargs = {"stop_strings": list(stop), "tokenizer": self.tokenizer}
        # an answer ends where the model's context does (as vLLM's do) when the budget reaches past it;
        # a resumed answer's prefix (fed with its prompt) has spent part of its budget
        budgets = [min(max_tokens - len(x), self.max_len - len(p)) for p, x in zip(prompts, prefixes)]
        gen = self.model.generate(
            input_ids=ids.to(self.device),
            attention_mask=att.to(self.device),
            max_new_tokens=max(budgets),
            do_sample=False,
            eos_token_id=list(self.eot),
            pad_token_id=self.pad_id,
            **kwargs,
        )[:, width:].tolist()
        return [self._finish(list(x) + row[:budget], stop) for row, budget, x in zip(gen, budgets, prefixes)]

    # -- drafting (harness.drafts) ------------------------------------------------------

    can_resume = True

    def verify(self, requests: Sequence[GenRequest], drafts: Sequence[Generation]) -> list[Check]:
        """The candidate's teacher-forced pass over each prompt + draft answer, batched by memory."""
        with self._answering():
            return self._verify(requests, drafts)

    def next_tokens(self, requests: Sequence[GenRequest], prefixes: Sequence[tuple[int, ...]]) -> list[int]:
        """The first token ``generate`` makes after each prompt + prefix, left-padded in batches
        by memory as a resumed generation is (its first step: the same pass)."""
        self.calls += 1
        with self._answering():
            fed = [p + list(x) for p, x in zip(self._prompts(requests), prefixes)]
            order = sorted(range(len(fed)), key=lambda i: -len(fed[i]))
            found: dict[int, int] = {}
            for batch in self._batches(order, lambda i: self.cost.generate(len(fed[i]), 1)):
                found.update(zip(batch, self._run(lambda b: self._next_batch([fed[i] for i in b]), batch)))
            return [found[i] for i in range(len(fed))]

    @_inference
    def _next_batch(self, prompts: list[list[int]]) -> list[int]:
        ids, att = self._padded(prompts, left=True)
        width = ids.shape[1]
        gen = self.model.generate(
            input_ids=ids.to(self.device), attention_mask=att.to(self.device), max_new_tokens=1, do_sample=False,
            eos_token_id=list(self.eot), pad_token_id=self.pad_id,
        )  # fmt: skip
        return [int(t) for t in gen[:, width].tolist()]  # the end-of-turn token too, as generate makes it

    def _verify(self, requests: Sequence[GenRequest], drafts: Sequence[Generation]) -> list[Check]:
        self.calls += 1
        prompts = self._prompts(requests)
        seqs = [p + list(d.token_ids) for p, d in zip(prompts, drafts)]
        order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
        found: dict[int, tuple[tuple[int, ...], tuple[float, ...]]] = {}
        run = functools.partial(self._verify_rows, prompts, seqs)
        for batch in self._batches(order, lambda i: self.cost.score(len(seqs[i]))):
            found.update(zip(batch, self._run(run, batch)))
        out = []
        for i, (r, p, d) in enumerate(zip(requests, prompts, drafts)):
            argmax, margin = found[i]
            end = argmax[-1] in self.eot
            name = self.tokenizer.decode([argmax[-1]], skip_special_tokens=False) if end else None
            fires = d.finish == "stop" and bool(r.stop) and self._stop_fires(seqs[i], r.stop)
            out.append(Check(argmax, margin, min(r.max_tokens, self.max_len - len(p)), name, fires))
        return out

    def _verify_rows(
        self, prompts: list[list[int]], seqs: list[list[int]], rows: list[int]
    ) -> list[tuple[tuple[int, ...], tuple[float, ...]]]:
        return self._verify_batch([(len(prompts[i]), seqs[i]) for i in rows])

    @_inference
    def _verify_batch(self, rows: list[tuple[int, list[int]]]) -> list[tuple[tuple[int, ...], tuple[float, ...]]]:
        """Right-padded (positions as in generation), the greedy token and top-2 margin at each
        answer position and the one after it; the log-probs of the answer's tokens (and a few
        before it) and of each end-of-turn token after it are kept (``Forced``)."""
        import torch

        ids, att = self._padded([s for _, s in rows])
        firsts = [max(n_prompt - 1 - LEAD, 0) for n_prompt, _ in rows]
        skip = min(firsts)  # the output layer runs from the first position any row needs
        logits = self.model(
            input_ids=ids.to(self.device), attention_mask=att.to(self.device), logits_to_keep=ids.shape[1] - skip
        ).logits
        out = []
        for i, ((n_prompt, s), first) in enumerate(zip(rows, firsts)):
            mine = logits[i, first - skip : len(s) - skip].float()
            top = mine[n_prompt - 1 - first :].topk(2, dim=-1)
            values, indices = top.values.cpu(), top.indices.cpu()
            out.append((tuple(indices[:, 0].tolist()), tuple((values[:, 0] - values[:, 1]).tolist())))
            logp = torch.log_softmax(mine, dim=-1)
            target = torch.tensor(s[first + 1 :], device=logp.device)
            tok = logp[:-1].gather(1, target[:, None])[:, 0].cpu()
            greedy = (logp[:-1].argmax(-1) == target).cpu()
            after = {t: float(logp[-1, t]) for t in self.eot}
            self.forced[tuple(s)] = Forced(first + 1, tok.tolist(), greedy.tolist(), after, int(indices[-1, 0]))
        return out

    def _padded(self, seqs: Sequence[Sequence[int]], left: bool = False) -> tuple[Any, Any]:
        """(ids, attention mask) of ``seqs`` padded to the longest: on the left to generate (the
        last position is each row's), else on the right (positions as in generation)."""
        import torch

        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        att = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            at = slice(width - len(s), width) if left else slice(0, len(s))
            ids[i, at] = torch.tensor(s, dtype=torch.long)
            att[i, at] = 1
        return ids, att

    def _stop_fires(self, seq: list[int], stop: tuple[str, ...]) -> bool:
        """Whether generate's stop-string rule ends a generation whose ids are ``seq`` now."""
        import torch
        from transformers import StopStringCriteria

        if stop not in self._criteria:
            self._criteria[stop] = StopStringCriteria(self.tokenizer, list(stop))
        return bool(self._criteria[stop](torch.tensor([seq]), None)[0])

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
        """Each request from a kept verify pass where one covers it, else from one forward pass
        over the longest request it is a prefix of (``covering``), batched by memory."""
        self.calls += 1
        whole = [split_pair(self.encode, r.context, r.continuation, self.bos_id()) for r in requests]
        pairs = fit_pairs(whole, self.max_len + 1, self.max_len)
        out = self.answer_forced(pairs)
        todo = [i for i, got in enumerate(out) if got is None]
        cover = covering([tuple(pairs[i][0] + pairs[i][1]) for i in todo])
        roots = sorted(set(cover.values()), key=lambda r: (-len(r), r))
        # each root from the first position a request it answers scores
        first = {r: len(r) for r in roots}
        for i in todo:
            c, k = pairs[i]
            root = cover[tuple(c + k)]
            first[root] = min(first[root], max(len(c) - 1, 0))
        rows = [(first[r], list(r)) for r in roots]
        scored: dict[tuple[int, ...], tuple[int, Any, Any]] = {}
        for batch in self._batches(list(range(len(rows))), lambda j: self.cost.score(len(rows[j][1]))):
            for j, got in zip(batch, self._run(lambda b: self._loglik_batch([rows[j] for j in b]), batch)):
                scored[roots[j]] = got
        for i in todo:
            c, k = pairs[i]
            lo, tok, greedy = scored[cover[tuple(c + k)]]
            a, b = len(c) - 1 - lo, len(c) - 1 - lo + len(k)
            out[i] = Loglik(float(tok[a:b].sum()), bool(greedy[a:b].all()), len(k)) if k else Loglik(0.0, True, 0)
        return [r for r in out if r is not None]

    @_inference
    def _loglik_batch(self, rows: list[tuple[int, list[int]]]) -> list[tuple[int, Any, Any]]:
        """For each (first, sequence): (first, the log-prob of each token after position
        ``first`` given those before it, whether each was the greedy token), float32 on CPU."""
        import torch

        seqs = [s[:-1] for _, s in rows]
        ids, att = self._padded([x or [self.pad_id] for x in seqs])
        skip = min(min(first for first, _ in rows), ids.shape[1] - 1)  # keep 0 would keep all
        logits = self.model(
            input_ids=ids.to(self.device), attention_mask=att.to(self.device), logits_to_keep=ids.shape[1] - skip
        ).logits
        logp = torch.log_softmax(logits.float(), dim=-1).cpu()
        res = []
        for i, (first, s) in enumerate(rows):
            lp = logp[i, first - skip : len(s) - 1 - skip]
            target = torch.tensor(s[first + 1 :])
            res.append((first, lp.gather(1, target[:, None])[:, 0], lp.argmax(-1) == target))
        return res
