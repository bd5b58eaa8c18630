"""Drafting: the base's stored answers as the candidate's drafts, verified in one pass.

A comparison spends most of its time generating the candidate's answers token by token,
yet a fine-tune fit to ship reproduces most of the base's answers exactly. For each
generation request of the candidate whose base answer is stored (same request, same
``gen_key``: the same prompt, stops and budget, from the base run's store), the backend
runs one teacher-forced pass of prompt + base answer (``Backend.verify``: the candidate's
greedy token and its top-2 margin at every answer position and the one after it), and:

* **drafted**: the candidate's greedy token is the base's at every position and the answer
  ends the same way (the same end-of-turn token next; the stop string the same tokens
  complete; the same length cap): the candidate's answer is the base's record;
* **resumed** (``hf``, ``vllm``): they agree on a prefix, then differ (or the base's answer
  ended where the candidate's runs on): generation resumes after the prefix, within the
  same budget and stop rules (``Backend.resume``), so generation makes the deciding token;
* **generated**: nothing agrees, or the backend cannot resume: generated in full, as
  without drafting.

**Near ties.** A position the decision rests on whose top two tokens are within the
threshold for the candidate's precision (``threshold_for``: ``THRESHOLD_FP32`` in float32,
else ``THRESHOLD``) could go either way under another batch or kernel order. Each is
decided by generation (``settle``): the backend makes the first token of a generation
resumed just before it (``Backend.next_tokens``, all ties in one call). Where that is the
pass's greedy token, the draft holds past the tie (every later position is a clear
decision); where not, generation resumes before the tie.

The pass is also what the drift probes compute (the base's answer scored under the
candidate): the backend keeps its log-probs (``backends.base.Forced``) and answers those
log-likelihood requests from them, so with drafting on the probes cost no forward pass.

``draft_sampled`` verifies a sample of the requests first and drafts them all only where the
sample's drafts would save a quarter of their tokens or more; else every item is generated,
as without drafting. Records and the store key are what full generation gives, so runs with
and without drafting share the store. ``--verify-drafts`` generates everything as well and
counts the items whose drafted or resumed answer differs from the full generation's.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

from harness.types import DraftCounts, Generation, GenRequest

# The least log-prob margin between the candidate's top two tokens at a position a draft's
# decision rests on, by the precision the candidate runs in: a batched teacher-forced pass and
# token-by-token decoding differ by float noise, ~1e-5 nats in float32 and orders more in
# 16-bit (see docs/DESIGN.md, "Drafting", for the measurements behind both).
THRESHOLD = 0.5  # bfloat16, float16, or a precision the backend cannot name
THRESHOLD_FP32 = 0.01


def threshold_for(dtype: str) -> float:
    """The margin threshold for a candidate whose weights and activations are ``dtype``
    (``float32``, ``torch.float32``, ``bfloat16``, ``auto``, ...)."""
    return THRESHOLD_FP32 if dtype.removeprefix("torch.") in ("float32", "float") else THRESHOLD


log = logging.getLogger(__name__)
Keep = Callable[[list[tuple[str, Generation]]], None]  # stores answers as they are made


@dataclass(frozen=True)
class Check:
    """A backend's teacher-forced pass over prompt + draft under the candidate.

    ``argmax[j]``/``margin[j]``: its greedy token and top-1 minus top-2 log-prob at answer
    position ``j`` (``len(draft) + 1`` positions: the last is the token after the draft);
    ``budget``: the tokens the request may generate on this backend; ``end``: the name of
    the end-of-turn token ``argmax[-1]`` is (None: not one); ``stop_fires``: the request's
    stop rule ends generation right after the draft's tokens (a stop string they complete).
    """

    argmax: tuple[int, ...]
    margin: tuple[float, ...]
    budget: int
    end: str | None
    stop_fires: bool


class NoDrafts(Exception):
    """The backend cannot verify drafts here (a server that does not give the prompt's
    log-probs by token id): every answer is generated, as without drafting."""


@dataclass(frozen=True)
class Plan:
    """What to do with one request: ``drafted`` (the base's answer is the candidate's),
    ``resume`` (generate after ``prefix``, the agreeing tokens) or ``generate``; ``ties``:
    the near-tie positions this rests on, each to be decided by generation first (``settle``)."""

    kind: str
    prefix: tuple[int, ...] = ()
    ties: tuple[int, ...] = ()


class Drafting(Protocol):
    """What a backend offers to draft: ``verify`` and ``next_tokens`` always; ``resume`` where
    it can continue a generation after given tokens exactly as full generation would
    (``can_resume``)."""

    can_resume: bool
    draft_threshold: float  # threshold_for the precision it runs in

    def verify(self, requests: Sequence[GenRequest], drafts: Sequence[Generation]) -> list[Check]: ...

    def next_tokens(self, requests: Sequence[GenRequest], prefixes: Sequence[tuple[int, ...]]) -> list[int]:
        """The token generation makes first after each prompt + prefix (greedy, the same pass a
        resumed generation starts with; no stop rule applies)."""
        ...

    def resume(
        self,
        requests: Sequence[GenRequest],
        prefixes: Sequence[tuple[int, ...]],
        on_done: Callable[[list[int], list[Generation]], None] | None = None,
    ) -> list[Generation]: ...


def agreeing(draft: Sequence[int], argmax: Sequence[int]) -> int:
    """How many leading draft tokens are the candidate's greedy tokens."""
    n = 0
    while n < len(draft) and argmax[n] == draft[n]:
        n += 1
    return n


def ends_alike(draft: Generation, check: Check) -> bool | None:
    """Whether the candidate's greedy path, having made every draft token, ends where and as
    the draft did: True, False (it runs on: resume after the whole draft), None (it cannot
    be known from the draft: generate)."""
    n = len(draft.token_ids)
    if draft.finish == "length":
        return True if n == check.budget and draft.n_tokens == n else None
    if draft.finish == "eos":
        if draft.n_tokens != n + 1 or n + 1 > check.budget:
            return None
        return check.end is not None and check.end == draft.stop_reason
    # a stop string: the tokens complete it (so generation stops there, as the base's did),
    # or the candidate's next token ends the turn (text and token count come out the same)
    if draft.n_tokens != n:
        return None
    return check.stop_fires or check.end is not None or (None if n >= check.budget else False)


def decide(draft: Generation, check: Check, threshold: float | None = None) -> Plan:
    """The plan for one request, from the base's answer and the candidate's pass over it
    (``threshold``: ``THRESHOLD`` unless given), with the near ties it rests on."""
    threshold = THRESHOLD if threshold is None else threshold
    toks = draft.token_ids
    k = agreeing(toks, check.argmax)
    if k == len(toks):
        alike = ends_alike(draft, check)
        if alike is None:
            return Plan("generate")
        # the token after the draft decides, unless the cap or a stop string the draft completes does
        rests_on = k if draft.finish == "length" or (alike and check.stop_fires) else k + 1
        ties = near_ties(check.margin[:rests_on], threshold)
        return Plan("drafted", (), ties) if alike else Plan("resume", toks, ties)
    # generation decides the first divergence itself: only the ties before it are probed
    return replace(_before(toks, k), ties=near_ties(check.margin[:k], threshold))


def near_ties(margins: Sequence[float], threshold: float) -> tuple[int, ...]:
    """The positions whose top two tokens are within ``threshold``."""
    return tuple(i for i, m in enumerate(margins) if m < threshold)


def _before(toks: tuple[int, ...], j: int) -> Plan:
    """Generation from position ``j`` on, after the draft's first ``j`` tokens (every one the
    candidate's clear greedy choice): the decision at ``j`` is generation's, as in a full run."""
    return Plan("resume", toks[:j]) if j > 0 else Plan("generate")


# At most this many near ties of one answer are decided by generation (``settle``); an answer
# with more resumes before the first one past them.
MAX_TIES = 4


def settle(
    backend: Drafting | None,
    requests: Sequence[GenRequest],
    drafts: Sequence[Generation],
    checks: Sequence[Check],
    plans: Sequence[Plan],
) -> list[Plan]:
    """Plans without near ties: at each tie, generation makes its token first (``next_tokens``
    after the draft's tokens before it, all in one call); where it is the candidate's greedy
    token of the pass, the draft holds past the tie (the positions after it are clear
    decisions); where it is not, generation resumes before the tie. Without ``backend``, every
    plan with a tie resumes before its first."""
    asks = [(i, j) for i, p in enumerate(plans) for j in p.ties[:MAX_TIES]] if backend is not None else []
    made: dict[tuple[int, int], int] = {}
    if asks and backend is not None:
        tokens = backend.next_tokens([requests[i] for i, _ in asks], [drafts[i].token_ids[:j] for i, j in asks])
        made = dict(zip(asks, tokens))
    out = []
    for i, p in enumerate(plans):
        toks, argmax = drafts[i].token_ids, checks[i].argmax
        off = next((j for j in p.ties if made.get((i, j)) != argmax[j]), None)
        out.append(replace(p, ties=()) if off is None else _before(toks, off))
    return out


def plan_all(
    drafts: Sequence[Generation],
    checks: Sequence[Check],
    can_resume: bool,
    threshold: float | None = None,
    settled: Callable[[list[Plan]], list[Plan]] | None = None,
) -> list[Plan]:
    """Each request's plan; ``settled`` decides the near ties (else each resumes before its first)."""
    plans = [decide(d, c, threshold) for d, c in zip(drafts, checks)]
    plans = settled(plans) if settled is not None else settle(None, (), drafts, checks, plans)
    return [p if p.kind != "resume" or can_resume else Plan("generate") for p in plans]


def saved(plan: Plan, draft: Generation) -> int:
    """Generation steps a plan saves over full generation."""
    if plan.kind == "drafted":
        return draft.n_tokens
    return len(plan.prefix)


def base_generations(answers: Mapping[str, Mapping[str, object]]) -> dict[str, Generation]:
    """The base run's stored generations by request key (rows that do not read as one are
    left out: they are generated)."""
    out = {}
    for k, d in answers.items():
        try:
            out[k] = Generation(
                text=str(d["text"]),
                n_tokens=int(d["n_tokens"]),  # type: ignore[call-overload]
                finish=str(d["finish"]),
                stop_reason=None if d.get("stop_reason") is None else str(d["stop_reason"]),
                token_ids=tuple(int(t) for t in d.get("token_ids") or ()),  # type: ignore[attr-defined]
            )
        except (KeyError, TypeError, ValueError):
            continue
    return out


def load_base(folder: str | Path) -> dict[str, Generation]:
    """The generations stored in a base run's folder (``answers.jsonl``), by request key; an
    unreadable file or line drafts nothing (those requests are generated)."""
    rows: dict[str, Mapping[str, object]] = {}
    try:
        lines = (Path(folder) / "answers.jsonl").read_bytes().splitlines()
    except OSError:
        return {}
    for line in lines:
        try:
            row = json.loads(line)
            if row["t"] == "gen":
                rows[str(row["k"])] = row["v"]
        except (ValueError, KeyError, TypeError):
            continue
    return base_generations(rows)


def verified_plans(
    backend: Drafting,
    mine: Sequence[tuple[str, GenRequest]],
    base: Mapping[str, Generation],
    threshold: float | None,
    known: Mapping[str, Plan] | None = None,
) -> tuple[list[Generation], list[Plan]]:
    """The base's drafts of ``mine`` (every key in ``base``) and their plans, from one verify
    pass and one pass deciding the near ties, over the requests ``known`` has no plan for."""
    known = known or {}
    drafts = [base[k] for k, _ in mine]
    todo = [i for i, (k, _) in enumerate(mine) if k not in known]
    plans = {
        mine[i][0]: p
        for i, p in zip(todo, _plans(backend, [mine[i][1] for i in todo], [drafts[i] for i in todo], threshold))
    }
    return drafts, [known[k] if k in known else plans[k] for k, _ in mine]


def _plans(
    backend: Drafting, requests: Sequence[GenRequest], drafts: Sequence[Generation], threshold: float | None
) -> list[Plan]:
    if not requests:
        return []
    checks = backend.verify(requests, drafts)
    limit = backend.draft_threshold if threshold is None else threshold
    return plan_all(drafts, checks, backend.can_resume, limit, lambda ps: settle(backend, requests, drafts, checks, ps))


def draft(
    backend: Drafting,
    items: Sequence[tuple[str, GenRequest]],
    base: Mapping[str, Generation],
    keep: Keep,
    verify_only: bool = False,
    threshold: float | None = None,
    known: Mapping[str, Plan] | None = None,
) -> tuple[list[tuple[str, GenRequest]], DraftCounts, dict[str, Generation]]:
    """Draft what the base's answers allow: (items left to generate, counts, the answers made
    here). Where any item resumes, the items to generate in full go in the same pass (one
    decode loop, not two); the answers are ``keep``-ed (stored) as they are made, except with
    ``verify_only``, where only the drafted and resumed answers are made, every item is left
    to generate and the answers are returned to be checked against the full generation's
    (``disagreements``). ``known``: plans already made (a sample's), not made again."""
    mine = [(k, r) for k, r in items if k in base]
    if not mine:
        return list(items), DraftCounts(generated=len(items)), {}
    drafts, plans = verified_plans(backend, mine, base, threshold, known)
    made = {k: d for (k, _), d, p in zip(mine, drafts, plans) if p.kind == "drafted"}
    if not verify_only:
        keep(list(made.items()))
    todo = [(k, r, p.prefix) for (k, r), p in zip(mine, plans) if p.kind == "resume"]
    resumed = len(todo)
    if todo and not verify_only:  # what is left to generate goes in the same pass (one decode loop, not two)
        todo += [(k, r, ()) for (k, r), p in zip(mine, plans) if p.kind == "generate"]
        todo += [(k, r, ()) for k, r in items if k not in base]
    if todo:

        def done(rows: list[int], gens: list[Generation]) -> None:
            pairs = [(todo[i][0], g) for i, g in zip(rows, gens)]
            made.update(pairs)
            if not verify_only:
                keep(pairs)

        backend.resume([r for _, r, _ in todo], [x for _, _, x in todo], done)
    left = list(items) if verify_only else [(k, r) for k, r in items if k not in made]
    drafted = sum(p.kind == "drafted" for p in plans)
    counts = DraftCounts(
        drafted=drafted,
        resumed=resumed,
        generated=len(items) - drafted - resumed,
        tokens_saved=sum(saved(p, d) for p, d in zip(plans, drafts)),
    )
    return left, counts, made


# Drafting pays for its verify pass only where it takes answers from the drafts: a sample is
# verified first (the first SAMPLE items, or 1/SAMPLE_SHARE of them if more), and where its
# drafts would save under PAYS of their tokens, every item is generated, unverified. A sample
# draft that ended its turn is verified whole (the drift probes score it under the candidate,
# and the pass answers them: it costs nothing); any other is verified on its first
# SAMPLE_TOKENS tokens only (a candidate whose own answers are short must not pay for a
# forward pass over the base's long ones).
SAMPLE, SAMPLE_SHARE, PAYS, SAMPLE_TOKENS = 8, 20, 0.25, 32


def draft_sampled(
    backend: Drafting,
    items: Sequence[tuple[str, GenRequest]],
    base: Mapping[str, Generation],
    keep: Keep,
    threshold: float | None = None,
) -> tuple[list[tuple[str, GenRequest]], DraftCounts]:
    """``draft`` where a sample says it pays: (items left to generate, counts). The sample is
    verified alone first (nothing generated); where its drafts would save under ``PAYS`` of
    their tokens, every item is left to generate, in one decode loop as without drafting, so
    a candidate that diverges early pays for verifying the sample only; else all the items
    are drafted together (the plans of the sample's whole drafts kept)."""
    n = max(SAMPLE, len(items) // SAMPLE_SHARE)
    head = [(k, r) for k, r in items[:n] if k in base]
    known: dict[str, Plan] = {}
    if len(items) > n and head:
        whole = [(k, r) for k, r in head if base[k].finish == "eos"]
        drafts, plans = verified_plans(backend, whole, base, threshold)
        known = {k: p for (k, _), p in zip(whole, plans)}
        would_save, asked = sum(saved(p, d) for p, d in zip(plans, drafts)), sum(d.n_tokens for d in drafts)
        cut = [(r, replace(base[k], token_ids=base[k].token_ids[:SAMPLE_TOKENS])) for k, r in head if k not in known]
        if cut:  # how far the candidate's greedy path follows each: a share of the tokens, no plan
            checks = backend.verify([r for r, _ in cut], [d for _, d in cut])
            would_save += sum(agreeing(d.token_ids, c.argmax) for (_, d), c in zip(cut, checks))
            asked += sum(len(d.token_ids) for _, d in cut)
        if would_save < PAYS * asked:
            log.info("drafting: the first %d answers would save %d of %d tokens; all %d are generated",
                     len(head), would_save, asked, len(items))  # fmt: skip
            return list(items), DraftCounts(generated=len(items))
    left, counts, _ = draft(backend, items, base, keep, threshold=threshold, known=known)
    return left, counts


def disagreements(made: Mapping[str, Generation], full: Mapping[str, Generation]) -> DraftCounts:
    """``--verify-drafts``: how many drafted or resumed answers differ from full generation's."""
    differ = [k for k, g in made.items() if full.get(k) != g]
    for k in differ[:5]:
        log.warning("drafting: %s drafted as %r, generated as %r", k, made[k], full.get(k))
    return DraftCounts(disagreed=len(differ), verified=len(made))
