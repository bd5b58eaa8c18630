"""``RegressLM``: a backend plugged into lm-eval as an lm-eval ``LM``.

lm-eval's evaluator drives it (so prompts and metrics are lm-eval's own); the adapter
hands every request of a call to the backend in bulk, in chunks that are written to the
store as soon as they finish (resume loses nothing), and keeps what lm-eval throws away:
full text, token ids and finish reason of each generation. As it serves each lm-eval
``Instance`` it records the instance's own identity (task, doc_id, idx: ``RequestId``) with
the request it answered (``RegressLM.served``), so that records are joined to lm-eval's
samples on that identity (``runner.records_of``), never by rebuilding a request.

The backend is started lazily, on the first request the store cannot answer, so a run
whose records are all stored never starts an engine. Progress (requests done, tokens/s,
ETA) goes to stderr per checkpoint (``harness.progress``); records reach the store at
least every ~``CHUNK_SECONDS`` of work: per batch where the backend reports batches
(``on_done``), and in chunks sized by time where grouping cannot move the answers.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from lm_eval.api.model import LM

from harness import defaults
from harness.backends.base import Backend
from harness.drafts import NoDrafts, disagreements, draft, draft_sampled
from harness.errors import BackendError
from harness.progress import Progress
from harness.store import Answer, RunStore, atomic_write
from harness.types import DraftCounts, Generation, GenRequest, Loglik, LoglikRequest, Messages, RequestId

if TYPE_CHECKING:
    from lm_eval.api.instance import Instance

Request = GenRequest | LoglikRequest
T = TypeVar("T")

log = logging.getLogger(__name__)
FIRST_CHUNK = 64  # requests in the first call of an engine whose chunks are sized by time
CHUNK_SECONDS = 20.0  # the work a chunk is sized to, so records reach the store at least this often


def gen_key(r: GenRequest) -> str:
    return hashlib.sha256(json.dumps(["gen", r.prompt, list(r.stop), r.max_tokens]).encode()).hexdigest()[:32]


def ll_key(r: LoglikRequest) -> str:
    return hashlib.sha256(json.dumps(["ll", r.context, r.continuation]).encode()).hexdigest()[:32]


def gen_request(context: str, gen_kwargs: Mapping[str, Any] | None, default_max: int) -> GenRequest:
    """The ``GenRequest`` of an lm-eval ``generate_until`` request (its prompt and
    ``generation_kwargs``): greedy, its stop strings, its token budget."""
    kw = dict(gen_kwargs or {})
    if kw.get("do_sample") or float(kw.get("temperature", 0.0) or 0.0) > 0:
        log.warning("regress decodes greedily; ignoring sampling settings %s", kw)
    until = kw.get("until") or []
    if isinstance(until, str):
        until = [until]
    max_tokens = int(kw.get("max_gen_toks", kw.get("max_new_tokens", default_max)))
    return GenRequest(prompt=context, stop=tuple(until), max_tokens=max_tokens)


class ServedRequests:
    """lm-eval's request identity -> the request regress answered for it, by item.

    Filled by ``RegressLM`` as lm-eval hands it ``Instance``s; read by whoever joins
    lm-eval's per-item samples to what the backend returned (``runner.records_of``).
    """

    def __init__(self) -> None:
        self._items: dict[tuple[str, int], dict[int, Request]] = {}

    def add(self, instances: Iterable[Instance], requests: Iterable[Request]) -> None:
        for inst, req in zip(instances, requests):
            if inst.task_name is None or inst.doc_id is None:
                continue  # an instance lm-eval did not build for a task (no identity to join on)
            self._items.setdefault((inst.task_name, inst.doc_id), {})[inst.idx] = req

    def __getitem__(self, rid: RequestId) -> Request:
        return self._items[(rid.task, rid.doc_id)][rid.idx]

    def of_item(self, task: str, doc_id: int) -> list[tuple[RequestId, Request]]:
        """The requests lm-eval made for one document, in its own order (``idx``)."""
        reqs = self._items.get((task, doc_id), {})
        return [(RequestId(task, doc_id, i), reqs[i]) for i in sorted(reqs)]


class RegressLM(LM):
    def __init__(
        self,
        backend_factory: Callable[[], Backend],
        store: RunStore,
        chat: Callable[[Messages, bool], str],
        tokenizer_name: str,
        default_max_tokens: int = defaults.MAX_GEN_TOKS,
        chunk_size: int | None = None,
        label: str = "",
    ) -> None:
        super().__init__()
        self._factory = backend_factory
        self._backend: Backend | None = None
        self._chat = chat
        self._tokenizer_name = tokenizer_name
        self.store = store
        self.default_max_tokens = default_max_tokens
        self.answers: dict[str, dict[str, Answer]] = {"gen": {}, "ll": {}}  # kind -> request key -> answer
        self.served = ServedRequests()  # lm-eval's request identity -> the request answered
        self.chunk_size = chunk_size  # None: the backend's own
        self.label = label or tokenizer_name  # names the checkpoint in progress lines
        self.reverse = False  # hand requests over in reverse order (noise-floor runs)
        self.backend_calls = 0  # calls made to the backend (0 when the store answered all)
        self.backend_requests = 0  # requests the backend answered (the rest came from the store)
        self.stored_requests = 0
        # drafting (harness.drafts): the base's stored generations by key, "on" / "verify" / "off"
        self.drafts: Mapping[str, Generation] = {}
        self.draft_mode = "off"
        self.draft_counts = DraftCounts()

    @property
    def backend(self) -> Backend:
        if self._backend is None:
            self._backend = self._factory()
        return self._backend

    def close(self) -> None:
        if self._backend is not None:
            self._backend.close()
            self._backend = None

    # -- lm-eval LM API ---------------------------------------------------------------

    @property
    def tokenizer_name(self) -> str:
        return self._tokenizer_name

    def chat_template(self, chat_template: bool | str = False) -> str:
        return ""

    def apply_chat_template(self, chat_history: Messages, add_generation_prompt: bool = True) -> str:
        return self._chat(chat_history, add_generation_prompt)

    def generate_until(self, requests: list[Instance], disable_tqdm: bool = False) -> list[str]:
        reqs = [gen_request(i.args[0], i.args[1], self.default_max_tokens) for i in requests]
        self.served.add(requests, reqs)
        return [g.text for g in self.generate(reqs)]

    def loglikelihood(self, requests: list[Instance], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        reqs = [LoglikRequest(i.args[0], i.args[1]) for i in requests]
        self.served.add(requests, reqs)
        return [(r.logprob, r.is_greedy) for r in self.score(reqs)]

    def loglikelihood_rolling(self, requests: list[Instance], disable_tqdm: bool = False) -> list[float]:
        raise BackendError("regress does not run perplexity (loglikelihood_rolling) tasks")

    # -- bulk calls with the store in front -------------------------------------------

    def generate(self, reqs: Sequence[GenRequest]) -> list[Generation]:
        return [_as(Generation, a) for a in self._fill("gen", [gen_key(r) for r in reqs], reqs)]

    def score(self, reqs: Sequence[LoglikRequest]) -> list[Loglik]:
        return [_as(Loglik, a) for a in self._fill("ll", [ll_key(r) for r in reqs], reqs)]

    def generation(self, req: GenRequest) -> Generation:
        """The answer already given to ``req`` (KeyError where it was never asked)."""
        return _as(Generation, self.answers["gen"][gen_key(req)])

    def loglik(self, req: LoglikRequest) -> Loglik:
        """The answer already given to ``req`` (KeyError where it was never asked)."""
        return _as(Loglik, self.answers["ll"][ll_key(req)])

    def _fill(self, kind: str, keys: list[str], reqs: Sequence[Request]) -> list[Answer]:
        """The answers to ``reqs`` (keyed ``keys``): remembered, else stored, else the backend's."""
        memo = self.answers[kind]
        stored = self.store.answers(kind)
        todo: dict[str, Request] = {}
        for k, r in zip(keys, reqs):
            if k in memo:
                continue
            if k in stored:
                memo[k] = stored[k]
                self.stored_requests += 1
            else:
                todo.setdefault(k, r)
        if todo:
            self._ask(kind, todo, memo)
        return [memo[k] for k in keys]

    def _ask(self, kind: str, todo: dict[str, Request], memo: dict[str, Answer]) -> None:
        """Ask the backend for ``todo`` in chunks, each stored (and remembered) as it finishes."""
        backend = self.backend
        items = list(todo.items())[:: -1 if self.reverse else 1]
        cap = self.chunk_size or backend.chunk_size
        # Where grouping cannot move the answers, chunks are sized to ~CHUNK_SECONDS of work,
        # so a killed run loses little and the store shows the run moving; else fixed.
        size = cap if backend.fixed_chunks else min(cap, FIRST_CHUNK)
        progress = Progress(f"{self.label}: {'generating' if kind == 'gen' else 'scoring'}", len(items))
        done_at: set[int] = set()
        made: dict[str, Generation] = {}
        if kind == "gen" and self.drafts and self.draft_mode != "off":
            try:
                if not hasattr(backend, "verify"):
                    raise NoDrafts("the backend has no verify pass")
                items, made = self._draft(items, backend, memo, progress)
            except NoDrafts as e:  # a server without prompt log-probs by token id: every answer generated
                log.info("%s: cannot verify drafts (%s); generating every answer", self.label, e)
                items, self.draft_mode = [(k, r) for k, r in items if k not in memo], "off"

        def keep(chunk: list[tuple[str, Any]], positions: list[int], answers: Sequence[Any]) -> None:
            self.store.append(kind, [(chunk[i][0], a) for i, a in zip(positions, answers)])
            for i, a in zip(positions, answers):
                memo[chunk[i][0]] = a
            done_at.update(positions)
            progress.update(len(positions), sum(getattr(a, "n_tokens", 0) for a in answers) if kind == "gen" else 0)

        s = 0
        while s < len(items):
            chunk = items[s : s + size]
            done_at.clear()
            t0 = time.monotonic()
            self.backend_calls += 1
            answers: Sequence[Any]
            if kind == "gen":
                answers = backend.generate([_as(GenRequest, r) for _, r in chunk], functools.partial(keep, chunk))
            else:
                answers = backend.loglikelihood([_as(LoglikRequest, r) for _, r in chunk])
            if len(answers) != len(chunk):
                raise BackendError(f"backend returned {len(answers)} answers for {len(chunk)} requests")
            rest = [i for i in range(len(chunk)) if i not in done_at]
            if rest:
                keep(chunk, rest, [answers[i] for i in rest])
            self.backend_requests += len(chunk)
            s += len(chunk)
            if not backend.fixed_chunks:
                per_request = max(time.monotonic() - t0, 1e-6) / len(chunk)
                size = max(1, min(cap, 8 * size, int(CHUNK_SECONDS / per_request)))
        if made:  # --verify-drafts: what drafting would have stored against what generation did
            self.draft_counts += disagreements(made, {k: _as(Generation, memo[k]) for k in made if k in memo})
            progress.label = f"{self.label}: generating ({self.draft_counts.line()})"
        progress.close()
        self._note_batching(backend)

    def _draft(
        self, items: list[tuple[str, Any]], backend: Any, memo: dict[str, Any], progress: Progress
    ) -> tuple[list[tuple[str, Any]], dict[str, Generation]]:
        """Answer what the base's drafts allow (stored as made); the items left to generate,
        and (``--verify-drafts``) the answers drafting made, to check against them."""

        def keep(pairs: list[tuple[str, Generation]]) -> None:
            self.store.append("gen", pairs)
            memo.update(pairs)
            progress.update(len(pairs))  # requests; tokens count only what is generated

        made: dict[str, Generation] = {}
        if self.draft_mode == "verify":  # every answer verified: a measurement, not a saving
            left, counts, made = draft(backend, items, self.drafts, keep, verify_only=True)
        else:
            left, counts = draft_sampled(backend, items, self.drafts, keep)
        self.draft_counts += counts
        progress.label = f"{self.label}: generating ({self.draft_counts.line()})"
        return left, made

    def _note_batching(self, backend: Any) -> None:
        """What sized the backend's batches (hf), next to the run's records: batching.json."""
        used = getattr(backend, "batching", None)
        if callable(used):
            info = used()
            log.info("%s: batches %s", self.label, info)
            atomic_write(self.store.path / "batching.json", json.dumps(info, sort_keys=True).encode())


def _as(cls: type[T], value: object) -> T:
    """``value``, which the kind it was kept under makes a ``cls``; checked, not cast."""
    if not isinstance(value, cls):
        raise BackendError(f"expected a {cls.__name__}, got {type(value).__name__}")
    return value
