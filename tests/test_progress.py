"""Progress lines and durable chunks: a long run shows it is moving and stores as it goes."""

from __future__ import annotations

import io
from collections.abc import Sequence

from harness.lm_adapter import CHUNK_SECONDS, FIRST_CHUNK, RegressLM
from harness.progress import Progress
from harness.types import Generation, GenRequest, Loglik, LoglikRequest


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_in_a_log_prints_a_line_every_period_and_a_last_line() -> None:
    out, clock = io.StringIO(), Clock()
    p = Progress("base: generating", 100, stream=out, every_s=30, clock=clock)
    clock.t = 10
    p.update(10, 500)  # too soon for a line
    assert out.getvalue() == ""
    clock.t = 40
    p.update(30, 1500)
    clock.t = 80
    p.update(60, 3000)
    p.close()
    lines = out.getvalue().splitlines()
    assert lines[0] == "base: generating: 40/100 requests, 2,000 tokens (50 tok/s), ETA 1m00s"
    assert lines[-1] == "base: generating: 100/100 requests, 5,000 tokens (62 tok/s), done in 1m20s"
    assert len(lines) == 2  # the update at 80 s was the last one: close prints it once


def test_progress_on_a_terminal_rewrites_one_line() -> None:
    out, clock = Tty(), Clock()
    p = Progress("ft: scoring", 10, stream=out, clock=clock)
    for _ in range(10):
        clock.t += 1
        p.update(1)
    p.close()
    text = out.getvalue()
    assert text.count("\n") == 1 and text.endswith("done in 10s\n")
    assert text.count("\r\x1b[2K") == 11  # each update and the last line overwrite the line in place


class FakeStore:
    def __init__(self) -> None:
        self.appends: list[int] = []

    def answers(self, kind: str) -> dict[str, dict[str, object]]:
        return {}

    def append(self, kind: str, pairs: Sequence[tuple[str, object]]) -> None:
        self.appends.append(len(list(pairs)))


class SlowEngine:
    """Answers in ``per_request`` simulated seconds each; reports batches of 10 when ``batches``."""

    def __init__(self, clock: Clock, per_request: float, fixed: bool, chunk_size: int, batches: bool) -> None:
        self.clock, self.per_request = clock, per_request
        self.fixed_chunks, self.chunk_size, self.batches = fixed, chunk_size, batches
        self.calls: list[int] = []

    def generate(self, requests: Sequence[GenRequest], on_done=None) -> list[Generation]:  # type: ignore[no-untyped-def]
        self.calls.append(len(requests))
        out = [Generation(r.prompt[::-1], 3, "eos") for r in requests]
        for s in range(0, len(out), 10):
            self.clock.t += self.per_request * len(out[s : s + 10])
            if self.batches and on_done is not None:
                on_done(list(range(s, min(s + 10, len(out)))), out[s : s + 10])
        return out

    def loglikelihood(self, requests: Sequence[LoglikRequest]) -> list[Loglik]:
        return [Loglik(-1.0, True, 1) for _ in requests]

    def close(self) -> None:
        pass


def _run(monkeypatch, engine: SlowEngine, clock: Clock, n: int) -> tuple[RegressLM, FakeStore]:  # type: ignore[no-untyped-def]
    import harness.lm_adapter as adapter

    monkeypatch.setattr(adapter.time, "monotonic", clock)
    store = FakeStore()
    lm = RegressLM(lambda: engine, store, lambda m, g: "", "ckpt", label="ckpt")  # type: ignore[arg-type]
    reqs = [GenRequest(f"prompt {i}") for i in range(n)]
    gens = lm.generate(reqs)
    assert [g.text for g in gens] == [r.prompt[::-1] for r in reqs]  # answers kept in request order
    return lm, store


def test_chunks_are_sized_by_time_where_grouping_cannot_move_answers(monkeypatch) -> None:
    clock = Clock()
    engine = SlowEngine(clock, per_request=0.5, fixed=False, chunk_size=4096, batches=False)
    _, store = _run(monkeypatch, engine, clock, 300)
    assert engine.calls[0] == FIRST_CHUNK
    assert all(c <= CHUNK_SECONDS / 0.5 for c in engine.calls[1:])  # ~20 s of work per call
    assert sum(engine.calls) == 300 and store.appends == engine.calls  # each call stored as it returns


def test_fixed_chunks_keep_their_size_and_store_each_reported_batch(monkeypatch) -> None:
    clock = Clock()
    engine = SlowEngine(clock, per_request=0.5, fixed=True, chunk_size=256, batches=True)
    _, store = _run(monkeypatch, engine, clock, 300)
    assert engine.calls == [256, 44]  # hf's chunks are keyed: never resized
    assert store.appends == [10] * 25 + [6] + [10] * 4 + [4]  # stored per batch, before each call returned
