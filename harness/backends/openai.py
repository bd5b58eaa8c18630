"""The ``openai`` backend: the ``/v1/completions`` endpoint of OpenAI-compatible servers.

For a fleet started with ``vllm serve`` (or SGLang, TGI, ...): ``--backend openai
--base-url URL [--base-url URL2 ...]``. Prompts are rendered locally by the checkpoint's
chat template (the adapter does that) and sent as token ids, tokenized exactly as the
``hf`` and ``vllm`` backends tokenize them, so no server adds a second BOS.

* Generation: greedy, the request's stop strings and token budget, the checkpoint's
  end-of-turn ids (``ckpt.eot.stop_ids``) as ``stop_token_ids``. Finish reason from the API: ``length`` ->
  ``length``; ``stop`` -> ``stop`` when a stop string ended it (vLLM's ``stop_reason``;
  a server that does not report it: when the request had stop strings and no end-of-turn
  id is seen), else ``eos``. Token ids from ``token_ids`` (vLLM's ``return_token_ids``), else
  re-tokenized from the text; token counts from ``usage``.
* Log-likelihood: ``echo`` + ``logprobs=1`` over context + continuation, summing the
  continuation's positions (lm-eval's split, as every backend).
* Drafting (``harness.drafts``): the verify pass is ``echo`` + ``logprobs=2`` over prompt +
  draft + an end-of-turn token, with the top tokens named by id (vLLM's
  ``return_tokens_as_token_ids``); a server that does not name them by id cannot verify, and
  every answer is generated (``NoDrafts``). A draft is taken whole or the item generated:
  a server's text for a prefix fed as prompt, and whether it sees a stop string that
  begins in it, are out of sight, so nothing resumes.
* Scale and failure: requests run on a bounded thread pool (``concurrency`` per URL),
  item ``i`` goes to URL ``i mod n`` and moves to the next URL on each retry. Connection
  errors, 429 and 5xx are retried with exponential backoff; after ``max_retries`` the
  call raises ``BackendError`` (exit 2). The adapter has stored every earlier chunk
  (``chunk_size`` is kept moderate for that), so the same command resumes; an outage is
  never recorded as an empty answer.

A PEFT adapter is asked for by the name the server gives it (``vllm serve BASE
--lora-modules NAME=DIR``): ``--api-model NAME``, else the adapter folder's name when the
server lists it.

The store key holds the model name asked for (``output_settings``): the server's own
settings and hardware are out of regress's sight.
"""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from harness.backends.base import LEAD, CheckpointBackend, CommonOptions, Done, Forced, cut_at_stop, split_pair
from harness.drafts import THRESHOLD, Check, NoDrafts
from harness.errors import BackendError
from harness.options import option
from harness.types import Generation, GenRequest, JsonObject, LoadedCheckpoint, Loglik, LoglikRequest, StoreSettings

if TYPE_CHECKING:
    import httpx

RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
BACKOFF_S = 0.5  # first retry delay; doubled on each retry, capped at BACKOFF_MAX_S
BACKOFF_MAX_S = 16.0


@dataclass(frozen=True)
class OpenAIOptions(CommonOptions):
    base_urls: tuple[str, ...] = option((), flag="--base-url", help="OpenAI-compatible server (repeatable)")
    api_model: str | None = option(None, help="model name the server knows (openai backend)")
    concurrency: int = option(16, at_least=1, help="requests in flight per server (openai)")
    max_retries: int = option(5, at_least=0, cli=False)


def api_root(url: str) -> str:
    """``http://host:port`` or ``http://host:port/v1`` -> ``http://host:port/v1``."""
    url = url.rstrip("/")
    return url if url.endswith("/v1") else url + "/v1"


def output_settings(options: OpenAIOptions) -> StoreSettings:
    return {"api_model": options.api_model}  # the server's own settings regress cannot see


def rerun_options(options: OpenAIOptions) -> tuple[OpenAIOptions, None]:
    return options, None  # the server batches as it schedules


def import_engine() -> object:
    import httpx

    return httpx


class OpenAIBackend(CheckpointBackend):
    options: OpenAIOptions

    def __init__(self, ckpt: LoadedCheckpoint, options: OpenAIOptions) -> None:
        if not options.base_urls:
            raise BackendError("the openai backend needs --base-url URL (one per server; repeat it for a fleet)")
        super().__init__(ckpt, options)
        self.urls = [api_root(u) for u in options.base_urls]
        self.concurrency = max(1, options.concurrency) * len(self.urls)
        self.max_retries = max(0, options.max_retries)
        # Moderate chunks: the adapter stores each one as it finishes, so an outage loses
        # at most one chunk; big enough that the pool stays busy between chunks.
        self.chunk_size = options.chunk_size or max(64, 4 * self.concurrency)
        self.fixed_chunks = False  # each request is answered on its own
        import httpx

        self.client = httpx.Client(
            timeout=httpx.Timeout(connect=10.0, read=600.0, write=60.0, pool=600.0),
            limits=httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency),
            trust_env=False,  # servers are named explicitly; never route them through a proxy
        )
        self._models: dict[str, str] = {}
        self.adapter_name = ckpt.adapter.name if ckpt.adapter else None
        self._lock = threading.Lock()
        self.answered = [0] * len(self.urls)  # requests answered, per base URL
        self.retries = 0
        self.calls = 0

    def close(self) -> None:
        self.client.close()

    # -- HTTP with retries ------------------------------------------------------------

    def _call(self, method: str, url: str, payload: JsonObject | None = None) -> JsonObject:
        """One HTTP call: its JSON, or ``_Retryable`` (connection error, 408/429/5xx), or
        ``_Refused`` (any other 4xx: retrying will not help)."""
        import httpx  # imported by __init__: a lookup

        try:
            resp = self.client.request(method, url, json=payload)
        except httpx.TransportError as e:
            raise _Retryable(f"{type(e).__name__}: {e}") from e
        if resp.status_code in RETRY_STATUS:
            raise _Retryable(f"HTTP {resp.status_code}: {_message(resp)}")
        if resp.status_code >= 400:
            raise _Refused(f"{url} refused a request: HTTP {resp.status_code}: {_message(resp)}")
        try:
            return resp.json()
        except ValueError as e:
            raise _Retryable(f"HTTP {resp.status_code} with a body that is not JSON") from e

    def _model(self, url: str) -> str:
        """The model name the server at ``url`` serves (``--api-model``, else asked once)."""
        if self.options.api_model:
            return self.options.api_model
        if url not in self._models:
            data = self._call("GET", f"{url}/models")
            listed = data.get("data")
            models = listed if isinstance(listed, list) else []
            ids = [str(m["id"]) for m in models if isinstance(m, dict) and m.get("id")]
            if self.checkpoint in ids:
                name = self.checkpoint
            elif self.adapter_name in ids:  # `vllm serve BASE --lora-modules NAME=DIR`: the adapter's name
                name = str(self.adapter_name)
            elif len(ids) == 1:
                name = ids[0]
            else:
                raise _Refused(f"{url} serves {ids}; name the one to use with --api-model")
            with self._lock:
                self._models[url] = name
        return self._models[url]

    def _complete(self, i: int, body: JsonObject, abort: threading.Event) -> _Answer:
        """POST one completion for item ``i``: to URL ``i mod n`` first and to the next URL
        on each retry (a dead server's items move to the others), with exponential backoff."""
        last = ""
        for attempt in range(self.max_retries + 1):
            if abort.is_set():
                raise BackendError("cancelled")
            shard = (i + attempt) % len(self.urls)
            url = self.urls[shard]
            try:
                data = self._call("POST", f"{url}/completions", {**body, "model": self._model(url)})
            except _Retryable as e:
                last = f"{url}: {e}"
            else:
                choices, usage = data.get("choices"), data.get("usage") or {}
                if not (isinstance(choices, list) and choices and isinstance(choices[0], dict)):
                    raise BackendError(f"{url} answered without choices: {json.dumps(data)[:200]}")
                if not isinstance(usage, dict):
                    raise BackendError(f"{url} answered with a usage that is not an object: {json.dumps(data)[:200]}")
                with self._lock:
                    self.answered[shard] += 1
                return _Answer(choices[0], usage)
            if attempt < self.max_retries:
                with self._lock:
                    self.retries += 1
                abort.wait(min(BACKOFF_S * 2**attempt, BACKOFF_MAX_S))
        raise BackendError(
            f"no server answered after {self.max_retries} retries ({last}); "
            "finished items are stored, run the same command again to resume"
        )

    def _map(self, bodies: list[JsonObject]) -> list[_Answer]:
        """All requests of a call on ``concurrency`` worker threads; the first failure
        cancels the rest.

        The workers are daemon threads and nothing waits for a request in flight once
        the call has failed or been interrupted: Ctrl-C stops regress at once even when
        a server hangs (the answers of finished chunks are already stored).
        """
        abort = threading.Event()
        finished = threading.Event()
        out: list[_Answer | None] = [None] * len(bodies)
        todo: queue.SimpleQueue[int] = queue.SimpleQueue()
        for i in range(len(bodies)):
            todo.put(i)
        errors: list[BaseException] = []
        left = [len(bodies)]
        lock = threading.Lock()

        def worker() -> None:
            while not abort.is_set():
                try:
                    i = todo.get_nowait()
                except queue.Empty:
                    return
                try:
                    answer = self._complete(i, bodies[i], abort)
                except BaseException as e:  # noqa: BLE001 - handed to the calling thread
                    with lock:
                        errors.append(e)
                    abort.set()
                    finished.set()
                    return
                with lock:
                    out[i] = answer
                    left[0] -= 1
                    if left[0] == 0:
                        finished.set()

        if not bodies:
            return []
        n_threads = min(self.concurrency, len(bodies)) or 1
        try:  # from the first thread on: a failure to start one, or Ctrl-C, stops those started
            for k in range(n_threads):
                threading.Thread(target=worker, name=f"openai-{k}", daemon=True).start()
            while not finished.wait(0.25):  # a timed wait, so Ctrl-C is seen at once
                pass
        finally:
            abort.set()
        with lock:
            if errors:
                raise errors[0]
            return [o for o in out if o is not None]

    # -- generation -------------------------------------------------------------------

    def generate(self, requests: Sequence[GenRequest], on_done: Done | None = None) -> list[Generation]:
        self.calls += 1
        bodies: list[JsonObject] = [
            {
                "prompt": self.encode(r.prompt),
                "max_tokens": r.max_tokens,
                "temperature": 0.0,
                "stop": list(r.stop) or None,
                "stop_token_ids": list(self.eot),  # vLLM/SGLang; the eos ids are the default elsewhere
                "return_token_ids": True,  # vLLM: the generated ids, for the token-level detectors
            }
            for r in requests
        ]
        return [self._finish(a.choice, a.usage, r) for a, r in zip(self._map(bodies), requests)]

    def _finish(self, choice: Mapping[str, Any], usage: Mapping[str, Any], r: GenRequest) -> Generation:
        text, hit = cut_at_stop(choice.get("text") or "", r.stop)
        raw_ids = choice.get("token_ids")
        toks = [int(t) for t in raw_ids] if isinstance(raw_ids, list) else self.encode(text)
        # usage counts the eos token, as hf does; re-tokenized text does not hold it
        n_tokens = int(usage.get("completion_tokens") or len(toks) + (choice.get("finish_reason") == "stop"))
        finish, stop_reason = choice.get("finish_reason"), choice.get("stop_reason")
        if finish == "length":
            return Generation(text, n_tokens, "stop" if hit else "length", hit, tuple(toks))
        if finish != "stop":
            raise BackendError(f"server ended a generation with finish_reason {finish!r}")
        if isinstance(stop_reason, str) or hit is not None:
            return Generation(text, n_tokens, "stop", hit or stop_reason, tuple(toks))
        if "stop_reason" not in choice and r.stop and not (toks and toks[-1] in self.eot):
            # a server that does not say why it stopped, on a request with stop strings,
            # that did not end on an end-of-turn id: a (removed) stop string ended it
            return Generation(text, n_tokens, "stop", r.stop[0] if len(r.stop) == 1 else None, tuple(toks))
        if toks and toks[-1] in self.eot:  # vLLM's token_ids end with the eos id
            eot: int | None = toks.pop()
        elif isinstance(stop_reason, int):
            eot = stop_reason
        else:
            eot = self.eot[0] if self.eot else None
        reason = self.tokenizer.decode([eot], skip_special_tokens=False) if eot is not None else None
        return Generation(text, n_tokens, "eos", reason, tuple(toks))

    # -- log-likelihood ---------------------------------------------------------------

    def loglikelihood(self, requests: Sequence[LoglikRequest]) -> list[Loglik]:
        self.calls += 1
        pairs = [split_pair(self.encode, r.context, r.continuation, self.bos_id()) for r in requests]
        known = self.answer_forced(pairs)  # the drift probes: the drafts' verify pass answers them
        todo = [(c, k) for (c, k), got in zip(pairs, known) if got is None]
        body = {"max_tokens": 1, "temperature": 0.0, "echo": True, "logprobs": 1}
        answers = iter(self._map([{**body, "prompt": c + k} for c, k in todo]))
        return [
            got if got is not None else _loglik(next(answers).choice, len(c), len(k))
            for (c, k), got in zip(pairs, known)
        ]

    # -- drafting (harness.drafts) ------------------------------------------------------

    can_resume = False  # a server's text after a prefix fed as prompt is out of sight
    draft_threshold = THRESHOLD  # the server's precision is out of sight

    def verify(self, requests: Sequence[GenRequest], drafts: Sequence[Generation]) -> list[Check]:
        """The candidate's greedy token and top-2 margin after each prompt + draft prefix, from
        the server's echoed log-probs over prompt + draft + an end-of-turn token (its position
        is the one after the draft)."""
        self.calls += 1
        prompts = [self.encode(r.prompt) for r in requests]
        seqs = [p + list(d.token_ids) + [self.eot[0]] for p, d in zip(prompts, drafts)]
        body = {"max_tokens": 1, "temperature": 0.0, "echo": True, "logprobs": 2, "return_tokens_as_token_ids": True}
        try:
            answers = self._map([{**body, "prompt": s} for s in seqs])
        except _Refused as e:  # e.g. a capped answer + 2 tokens past the server's context: generate them all
            raise NoDrafts(str(e)) from e
        checks = []
        for r, p, s, d, a in zip(requests, prompts, seqs, drafts, answers):
            echoed = _echoed(a.choice, len(s))
            tops = [_top2(x) for x in echoed[len(p) :]]
            argmax = tuple(t for t, _ in tops)
            name = self.tokenizer.decode([argmax[-1]], skip_special_tokens=False) if argmax[-1] in self.eot else None
            checks.append(Check(argmax, tuple(m for _, m in tops), r.max_tokens, name, d.finish == "stop"))
            self.forced[tuple(s[:-1])] = _kept(a.choice, echoed, s, max(len(p) - LEAD, 1), self.eot)
        return checks

    def next_tokens(self, requests: Sequence[GenRequest], prefixes: Sequence[tuple[int, ...]]) -> list[int]:
        """The greedy token generation makes first after each prompt + prefix (-1 where the
        server does not return token ids: the draft does not hold past that tie)."""
        self.calls += 1
        body = {"max_tokens": 1, "temperature": 0.0, "ignore_eos": True, "return_token_ids": True}
        answers = self._map([{**body, "prompt": self.encode(r.prompt) + list(x)} for r, x in zip(requests, prefixes)])
        out = []
        for a in answers:
            ids = a.choice.get("token_ids")
            out.append(int(ids[0]) if isinstance(ids, list) and ids else -1)
        return out

    def resume(
        self, requests: Sequence[GenRequest], prefixes: Sequence[tuple[int, ...]], on_done: Done | None = None
    ) -> list[Generation]:
        raise BackendError("the openai backend does not resume drafts (can_resume is False)")


class _Answer(NamedTuple):
    """A completion's first choice and its usage, as the server sent them (checked to be objects)."""

    choice: JsonObject
    usage: JsonObject


class _Retryable(Exception):
    """A failure worth retrying: the connection, a timeout, 408/429 or a 5xx."""


class _Refused(BackendError):
    """The server answered, and said no (4xx): retrying or another URL will not help."""


def _loglik(choice: Mapping[str, Any], n_ctx: int, n_cont: int) -> Loglik:
    lp = choice.get("logprobs") or {}
    token_lps, tops = lp.get("token_logprobs") or [], lp.get("top_logprobs") or []
    if len(token_lps) < n_ctx + n_cont:
        raise BackendError("server did not echo the prompt's log-probabilities (needs echo + logprobs support)")
    total, greedy = 0.0, True
    for pos in range(n_ctx, n_ctx + n_cont):
        x = float(token_lps[pos])
        total += x
        top = tops[pos] if pos < len(tops) and tops[pos] else {}
        greedy = greedy and x >= max(top.values(), default=x)
    return Loglik(total, greedy, n_cont)


def _echoed(choice: Mapping[str, Any], n: int) -> list[dict[int, float]]:
    """The top log-probs the server echoed for each of a prompt's ``n`` positions (the first,
    which nothing predicts, empty), by token id."""
    tops = (choice.get("logprobs") or {}).get("top_logprobs") or []
    if len(tops) < n:
        raise NoDrafts("the server did not echo the prompt's log-probabilities")
    out: list[dict[int, float]] = []
    for top in tops[:n]:
        try:
            out.append({_token_id(k): float(v) for k, v in (top or {}).items()})
        except (AttributeError, TypeError, ValueError):
            why = "the server does not name log-prob tokens by id (vLLM's return_tokens_as_token_ids)"
            raise NoDrafts(why) from None
    return out


def _token_id(name: object) -> int:
    """``token_id:N`` -> N (a token named by its text raises ValueError: its id is not known)."""
    text = str(name)
    if not text.startswith("token_id:"):
        raise ValueError(text)
    return int(text.removeprefix("token_id:"))


def _kept(
    choice: Mapping[str, Any], echoed: list[dict[int, float]], seq: list[int], lo: int, eot: Sequence[int]
) -> Forced:
    """What ``verify`` keeps of one pass over ``seq`` (prompt + draft + an end-of-turn token)
    for the drift probes: each token's log-prob from ``lo`` on and whether it was the greedy
    one (as ``_loglik`` judges it), and the end-of-turn tokens' log-probs after the draft."""
    raw = (choice.get("logprobs") or {}).get("token_logprobs") or []
    if len(raw) < len(seq):
        raise NoDrafts("the server did not echo the prompt's log-probabilities")
    lps = [float(x) for x in raw[lo : len(seq)]]
    n = len(seq) - 1
    mine = lps[: n - lo]
    greedy = [x >= max(echoed[lo + i].values(), default=x) for i, x in enumerate(mine)]
    after = {t: v for t, v in echoed[n].items() if t in eot} | {seq[n]: lps[n - lo]}
    return Forced(lo, mine, greedy, after, _top2(echoed[n])[0])


def _top2(top: Mapping[int, float]) -> tuple[int, float]:
    """(the greedy token, its log-prob margin over the second) at one position."""
    if not top:
        raise NoDrafts("the server echoed no log-probabilities for an answer's position")
    ranked = sorted(top.items(), key=lambda kv: -kv[1])
    return ranked[0][0], ranked[0][1] - (ranked[1][1] if len(ranked) > 1 else float("-inf"))


def _message(resp: httpx.Response) -> str:
    """The first line of a server's error message (OpenAI's ``{"error": {"message"}}``)."""
    try:
        body = resp.json()
    except ValueError:
        body = resp.text
    err = body.get("error", body) if isinstance(body, dict) else body
    msg = str(err.get("message", err) if isinstance(err, dict) else err).strip()
    return msg.splitlines()[0][:300] if msg else f"(empty body, HTTP {resp.status_code})"
