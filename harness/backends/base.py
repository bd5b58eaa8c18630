"""The backend contract: the few calls the pipeline needs from an inference engine.

A backend is started once per checkpoint, from the checkpoint loaded once per run
(``harness.types.LoadedCheckpoint``: its tokenizer and end-of-turn ids come from there),
and answers, in bulk:

* ``generate(requests)``: greedy generations with finish reasons and token ids;
* ``loglikelihood(requests)``: summed log-probs of continuations (multiple choice, probes);
* ``chunk_size``: how many requests to hand over per call (each chunk is stored as it finishes);
* ``fixed_chunks``: whether how requests are grouped into calls can move the answers (hf:
  its chunks decide which prompts are padded together, so their size is fixed and keyed);
  where it cannot, the adapter sizes chunks by time so that records are stored often;
* ``on_done``: a generation backend may report batches as they finish, before the call
  returns, and the adapter stores them at once;
* ``close()``: stop the engine and free its memory.

A backend that verifies drafts (``harness.drafts``) keeps what its teacher-forced pass
computed (``Forced``: the candidate's log-prob of every answer token and of each
end-of-turn token after the answer) and answers from it the log-likelihood requests that
pass already covers (``forced_loglik``): the drift probes score the base's answers under
the candidate, the same pass, so with drafting on they cost no second forward pass.

Each engine module (``hf``, ``vllm``, ``openai``) owns its knowledge and provides, besides
its backend class, its options (a dataclass extending ``CommonOptions``) and the functions
of ``EngineModule``: its defaults resolved into the settings that key the store, the
options of the noise floor's second run, and the import of its engine. An engine module
imports its engine (torch, vllm, httpx) only when a backend is started, so that the
registry can read its options cheaply. Backends never see lm-eval objects; ``harness.lm_adapter.RegressLM`` turns
lm-eval ``Instance``s into ``GenRequest``/``LoglikRequest`` lists and back. Backends are
registered by name in ``harness.backends``, the one place a new backend is added.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from harness.errors import BackendError
from harness.options import check, option
from harness.types import Generation, GenRequest, LoadedCheckpoint, Loglik, LoglikRequest, StoreSettings

log = logging.getLogger(__name__)

# Called with the positions (in the call's requests) and answers of a batch that finished.
Done = Callable[[list[int], list[Generation]], None]


@dataclass(frozen=True)
class CommonOptions:
    """The options every backend takes. Each engine module declares its own options as a
    frozen dataclass that extends this one (``hf.HFOptions``...), each field with its
    ``option(...)`` spec; ``harness.backends.BackendOptions`` joins them into the one set
    of flags and values a run carries. Unset (None) means the backend's own default."""

    dtype: str | None = option(None, choices=("auto", "float32", "bfloat16", "float16"), help="weights' dtype")
    trust_remote_code: bool = option(False, help="run the checkpoint's own modelling code")
    chunk_size: int | None = option(None, at_least=1, help="requests per backend call, stored as each finishes")

    def __post_init__(self) -> None:
        check(self)


@runtime_checkable
class Backend(Protocol):
    # How many requests to hand over per call when streaming records to the store (at most).
    chunk_size: int
    # True where grouping requests into calls can move the answers (chunk size is then fixed).
    fixed_chunks: bool

    def generate(self, requests: Sequence[GenRequest], on_done: Done | None = None) -> list[Generation]: ...

    def loglikelihood(self, requests: Sequence[LoglikRequest]) -> list[Loglik]: ...

    def close(self) -> None: ...


class EngineModule(Protocol):
    """What ``harness.backends`` asks of an engine module, none of which starts an engine."""

    def import_engine(self) -> object:
        """Import the engine's packages (after setting their environment); ImportError where
        one is not installed."""
        ...

    # ``options`` below is the run's ``BackendOptions``, which extends the module's own options class

    def output_settings(self, options: Any) -> StoreSettings:
        """The settings that can move this backend's answers, defaults filled in: the part
        of the store key the backend makes."""
        ...

    def rerun_options(self, options: Any) -> tuple[Any, tuple[int, int] | None]:
        """Options of the noise floor's second run of the base, and the two batch sizes
        (None where the engine batches as it schedules)."""
        ...


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()  # asks the driver for a count; does not initialise CUDA


class CheckpointBackend:
    """What every backend takes from the loaded checkpoint: its tokenizer, loaded once per
    run, and ``eot``, the one list of end-of-turn ids (``ckpt.eot.stop_ids``) it stops on.
    Prompts are rendered by the chat template, which writes BOS itself, so encoding adds
    no specials."""

    def __init__(self, ckpt: LoadedCheckpoint, options: CommonOptions) -> None:
        self.options = options
        self.checkpoint = ckpt.path
        self.tokenizer: Any = ckpt.tokenizer
        self.eot: tuple[int, ...] = ckpt.eot.stop_ids
        self.forced: dict[tuple[int, ...], Forced] = {}  # the verify passes of the checkpoint answering now
        self.from_forced = 0  # log-likelihood requests answered from them

    def answer_forced(self, pairs: Sequence[tuple[list[int], list[int]]]) -> list[Loglik | None]:
        """The requests (context, continuation ids) a kept verify pass answers; None for the rest."""
        got = [forced_loglik(self.forced, c, k) if self.forced else None for c, k in pairs]
        n = sum(g is not None for g in got)
        if n:
            self.from_forced += n
            log.info("%d of %d log-likelihood requests answered from the drafts' verify pass", n, len(pairs))
        return got

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False).input_ids

    def bos_id(self) -> int:
        """The token an empty context stands for: BOS, else the first end-of-turn id."""
        bos = self.tokenizer.bos_token_id
        return bos if bos is not None else self.eot[0]


# -- the drafts' teacher-forced pass, kept for the log-likelihoods it answers -------------

# prompt tokens before the answer whose log-probs are kept too (lm-eval moves a context's trailing
# whitespace, such as a chat template's last newline, to its continuation)
LEAD = 4


@dataclass(frozen=True)
class Forced:
    """What a verify pass computed over one sequence (prompt + draft): ``logp[i]`` and
    ``greedy[i]`` are the log-prob of token ``lo + i`` given the tokens before it and
    whether it was the greedy token, to the sequence's end; ``after`` maps each end-of-turn
    id to its log-prob after the whole sequence, whose greedy token is ``after_top``."""

    lo: int
    logp: Sequence[float]
    greedy: Sequence[bool]
    after: dict[int, float]
    after_top: int


def forced_loglik(memo: dict[tuple[int, ...], Forced], ctx: list[int], cont: list[int]) -> Loglik | None:
    """The log-likelihood of ``cont`` after ``ctx`` from a kept pass over ``ctx + cont`` (or
    over all of it but a last end-of-turn token); None where no pass covers it."""
    whole = tuple(ctx + cont)
    f, extra = memo.get(whole), None
    if f is None and cont:
        f, extra = memo.get(whole[:-1]), whole[-1]
        if f is not None and extra not in f.after:
            return None
    if f is None or len(ctx) < f.lo:
        return None
    span = range(len(ctx) - f.lo, len(whole) - (extra is not None) - f.lo)
    vals = [f.logp[i] for i in span]
    greedy = all(f.greedy[i] for i in span)
    if extra is not None:
        vals.append(f.after[extra])
        greedy = greedy and f.after_top == extra
    return Loglik(float(sum(vals)), greedy, len(cont))


def covering(seqs: Sequence[tuple[int, ...]]) -> dict[tuple[int, ...], tuple[int, ...]]:
    """Each sequence -> the longest sequence of ``seqs`` it is a prefix of (itself if none).

    A causal model's log-prob of token ``i`` depends on tokens ``< i`` only, so one forward
    pass answers every request that is a prefix of it: the drift probes' (prompt, answer)
    and (prompt + answer, end-of-turn) become one. In lexicographic order the sequences a
    prefix starts come right after it, so comparing each with its successor finds them all.
    """
    order = sorted(set(seqs))
    cover: dict[tuple[int, ...], tuple[int, ...]] = {}
    for i in range(len(order) - 1, -1, -1):
        s, nxt = order[i], order[i + 1] if i + 1 < len(order) else None
        cover[s] = cover[nxt] if nxt is not None and nxt[: len(s)] == s else s
    return cover


def cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, str | None]:
    """Cut ``text`` before the earliest stop string; return (text, stop or None)."""
    best = -1
    hit: str | None = None
    for s in stops:
        if not s:
            continue
        i = text.find(s)
        if i != -1 and (best == -1 or i < best):
            best, hit = i, s
    if hit is None:
        return text, None
    return text[:best], hit


def cut_prompt(ids: list[int], max_tokens: int, limit: int) -> list[int]:
    """lm-eval's cut of a generation prompt longer than the model's context (``limit``): its
    last ``limit - max_tokens`` tokens, so that prompt and answer fit. A budget that fills
    the context on its own cuts only what does not fit (``limit - 1``: room for one token),
    and the answer ends at the context (lm-eval would cut the prompt to nothing)."""
    keep = limit - max_tokens if max_tokens < limit else limit - 1
    return ids[-keep:] if len(ids) > keep else ids


def cut_pair(ctx: list[int], cont: list[int], keep: int, limit: int) -> tuple[list[int], list[int]]:
    """lm-eval's cut of a log-likelihood pair: the last ``keep`` tokens of context and
    continuation, taken from the context. lm-eval's HF model keeps ``limit + 1`` (its input
    is all but the last token); vLLM takes ``limit - 1`` (a prompt needs room for one token
    after it), so on a cut item the two backends score with contexts two tokens apart. A
    continuation that does not fit on its own is one line."""
    over = len(ctx) + len(cont) - keep
    if over <= 0:
        return ctx, cont
    if over >= len(ctx):
        raise BackendError(f"a continuation of {len(cont)} tokens does not fit the model's {limit}-token context")
    return ctx[over:], cont


def fit_prompts(prompts: Sequence[list[int]], budgets: Sequence[int], limit: int) -> list[list[int]]:
    """``cut_prompt`` over a call's generation prompts, with one warning counting the cut ones."""
    fitted = [cut_prompt(p, b, limit) for p, b in zip(prompts, budgets)]
    _warn_cut(sum(len(a) != len(b) for a, b in zip(prompts, fitted)), len(fitted), limit)
    return fitted


def fit_pairs(pairs: Sequence[tuple[list[int], list[int]]], keep: int, limit: int) -> list[tuple[list[int], list[int]]]:
    """``cut_pair`` over a call's log-likelihood pairs, with one warning counting the cut ones."""
    fitted = [cut_pair(c, k, keep, limit) for c, k in pairs]
    _warn_cut(sum(len(a[0]) != len(b[0]) for a, b in zip(pairs, fitted)), len(fitted), limit)
    return fitted


def _warn_cut(n_cut: int, n: int, limit: int) -> None:
    if n_cut:
        log.warning(
            "%d of %d requests were longer than the model's %d-token context: cut from the left, as lm-eval does",
            n_cut, n, limit,
        )  # fmt: skip


def split_pair(
    encode: Callable[[str], list[int]], context: str, continuation: str, bos_id: int
) -> tuple[list[int], list[int]]:
    """lm-eval's context/continuation split, shared by every backend: trailing spaces of
    the context move to the continuation, and the continuation's tokens are those of the
    whole string after the context's (``bos_id`` stands in for an empty context)."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    ctx = encode(context)
    if not ctx:
        return [bos_id], encode(continuation)
    return ctx, encode(context + continuation)[len(ctx) :]
