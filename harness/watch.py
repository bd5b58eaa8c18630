"""``regress watch --base B RUN_DIR``: gate a training run's checkpoints as they land.

The watch polls ``RUN_DIR`` for ``checkpoint-N`` folders (the Trainer's, TRL's, axolotl's
layout) and gates each one against the base, in step order, as ``regress compare`` would:
its report under ``OUT/checkpoint-N/``, the run's trend report (``OUT/trend.html`` and
``trend.json``, ``harness.trend``) rewritten after each, one line printed per checkpoint.

* **Complete only.** A checkpoint is read once the trainer's state file
  (``trainer_state.json``, which the Trainer writes after the weights, optimizer and
  scheduler) is there and no file of the folder changed size or time between two polls.
  A half-written checkpoint is never read; a folder that never gets its state file is
  never gated (and named when the watch stops at the sentinel).
* **Durable and resumable.** ``OUT/watch.json`` holds every gated checkpoint's point
  (verdict and task rows), written atomically after each. Ctrl-C exits 130; the same
  command resumes and gates no checkpoint twice. The base is evaluated once (its records
  are in the store: reused by every checkpoint and every restart).
* **Stops** at ``--until-step N`` (once every checkpoint up to N is gated and the run has
  reached N), at a sentinel file (``--sentinel``, default ``RUN_DIR/DONE``: the training
  script writes it when it ends; the checkpoints complete by then are gated first), or on
  Ctrl-C. ``--stop-on-fail`` writes ``RUN_DIR/STOP`` (the training script polls it) and
  exits 1 at the first FAIL. Otherwise the exit code is ``regress trend``'s: 1 when the
  newest gated checkpoint fails, else 0.

``harness.integrations.RegressCallback`` records its verdicts in the same state file, so a
watch started on its output folder later goes on from them.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from harness import defaults
from harness.config import RunConfig, add_arguments, option
from harness.errors import RegressError
from harness.store import atomic_write
from harness.trend import TrendPoint, nonterm_rate, point_from_dict, point_to_dict, row_from_dict, write_trend

STATE_FILE = "watch.json"
STATE_VERSION = 1
TRAINER_STATE = "trainer_state.json"
STOP_FILE = "STOP"
SENTINEL = "DONE"
CHECKPOINT = re.compile(r"checkpoint-(\d+)")
LEVELS = {"PASS": 0, "WARN": 1, "FAIL": 2}  # regress/verdict as a number


def say(line: str) -> None:
    """A watch's line on stdout, at once (a log file or pipe reads it as it happens)."""
    print(line, flush=True)


# -- the state file -------------------------------------------------------------------


@dataclass(frozen=True)
class WatchState:
    """What a watch has gated so far: one point per checkpoint, by step."""

    base: str
    suite: str
    points: tuple[TrendPoint, ...] = ()

    @property
    def gated(self) -> frozenset[str]:
        return frozenset(Path(p.path).name for p in self.points)

    def add(self, point: TrendPoint) -> WatchState:
        """This state with ``point`` added (replacing an earlier point of the same checkpoint)."""
        name = Path(point.path).name
        kept = [p for p in self.points if Path(p.path).name != name]
        return replace(self, points=tuple(sorted((*kept, point), key=lambda p: p.step)))

    def to_json(self) -> bytes:
        data = {"version": STATE_VERSION, "base": self.base, "suite": self.suite,
                "points": [point_to_dict(p) for p in self.points]}  # fmt: skip
        return json.dumps(data, indent=1, default=str).encode()


def load_state(out: Path, base: str, suite: str) -> WatchState:
    """The state in ``out`` (empty where there is none); one of another base or suite is an error."""
    f = out / STATE_FILE
    if not f.exists():
        return WatchState(base, suite)
    try:
        d = json.loads(f.read_text())
        state = WatchState(str(d["base"]), str(d["suite"]), tuple(point_from_dict(p) for p in d["points"]))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise RegressError(f"{f} is not a regress watch state file ({type(e).__name__}: {e}); remove it") from e
    if (state.base, state.suite) != (base, suite):
        raise RegressError(
            f"{out} holds the watch of {state.base} on suite {state.suite}, not {base} on {suite}: give another --out"
        )
    return state


def record(out: Path, state: WatchState, point: TrendPoint) -> WatchState:
    """Add ``point``, store the state (atomically), then rewrite the trend report."""
    new = state.add(point)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / STATE_FILE, new.to_json())
    write_trend(new.base, list(new.points), out, "step")
    return new


def point_from_summary(summary: Mapping[str, Any], path: str, step: int) -> TrendPoint:
    """A trend point from a report's summary.json: each standalone task and each group (in
    place of its first subtask), as ``Comparison.units`` orders them."""
    groups = {g["name"]: row_from_dict(g) for g in summary.get("groups", ())}
    units, placed = [], set()
    for t in summary["tasks"]:
        group = t.get("group")
        if group not in groups:
            units.append(row_from_dict(t))
        elif group not in placed:
            placed.add(group)
            units.append(groups[group])
    return TrendPoint(path, step, str(summary["verdict"]), tuple(units), row_from_dict(summary["overall"]))


def metrics_of(point: TrendPoint) -> dict[str, float]:
    """The numbers a trainer logs for one gated checkpoint (``regress/verdict``: 0 pass, 1 warn, 2 fail)."""
    o = point.overall
    logs = {"regress/verdict": float(LEVELS.get(point.verdict, 2)), "regress/accuracy": o.acc_candidate,
            "regress/nfr": o.nfr, "regress/nonterm": nonterm_rate(o) or 0.0}  # fmt: skip
    for t in point.tasks:
        logs |= {f"regress/{t.name}/accuracy": t.acc_candidate, f"regress/{t.name}/nfr": t.nfr,
                 f"regress/{t.name}/nonterm": nonterm_rate(t) or 0.0}  # fmt: skip
    return logs


def line_of(point: TrendPoint, report: Path) -> str:
    """The one line printed per gated checkpoint."""
    o = point.overall
    return (
        f"  step {point.step:>8}  {point.verdict:4s}  acc {o.acc_candidate:.3f}  NFR {o.nfr:.3f}  "
        f"non-term {nonterm_rate(o) or 0.0:.3f}  {point.path}  report: {report}"
    )


# -- which checkpoints have landed ----------------------------------------------------


@dataclass(frozen=True)
class Landed:
    """A ``checkpoint-N`` folder as one poll saw it."""

    path: Path
    step: int
    has_state: bool  # trainer_state.json written
    complete: bool  # and nothing in the folder changed since the poll before


def step_of(folder: Path) -> int:
    m = CHECKPOINT.fullmatch(folder.name)
    if m is None:
        raise RegressError(f"{folder} is not a checkpoint-N folder")
    return int(m.group(1))


Snapshot = tuple[tuple[str, int, int], ...]


def snapshot(folder: Path) -> Snapshot | None:
    """Every file's (name, size, mtime) once the trainer's state file is there, else None."""
    if not (folder / TRAINER_STATE).is_file():
        return None
    try:
        stats = [(str(f.relative_to(folder)), f.stat()) for f in folder.rglob("*") if f.is_file()]
    except OSError:  # a file went while we looked (a checkpoint rotated away): not stable
        return None
    return tuple(sorted((name, st.st_size, st.st_mtime_ns) for name, st in stats))


@dataclass
class Poller:
    """The checkpoints of a run folder, poll by poll: complete when two polls agree."""

    run_dir: Path
    seen: dict[str, Snapshot | None] = field(default_factory=dict)

    def poll(self) -> list[Landed]:
        found = []
        for d in self.run_dir.iterdir() if self.run_dir.is_dir() else ():
            m = CHECKPOINT.fullmatch(d.name)
            if m and d.is_dir():
                snap = snapshot(d)
                stable = snap is not None and self.seen.get(d.name) == snap
                self.seen[d.name] = snap
                found.append(Landed(d, int(m.group(1)), snap is not None, stable))
        return sorted(found, key=lambda c: c.step)


# -- the watch ------------------------------------------------------------------------


@dataclass(frozen=True)
class WatchRequest:
    """What ``regress watch`` asks for."""

    base: str
    run_dir: str
    config: RunConfig
    out: str | None = None
    policy_file: str | None = None
    until_step: int | None = None
    sentinel: str | None = None
    stop_on_fail: bool = False
    poll: float = 10.0

    @property
    def out_dir(self) -> Path:
        return Path(self.out) if self.out else Path(defaults.REPORTS_DIR) / f"watch-{Path(self.run_dir).resolve().name}"

    @property
    def sentinel_file(self) -> Path:
        return Path(self.sentinel) if self.sentinel else Path(self.run_dir) / SENTINEL


@dataclass
class Watch:
    """A running watch: the base's records (evaluated once) and the state so far."""

    req: WatchRequest
    gate: Callable[[Path], TrendPoint]
    state: WatchState
    emit: Callable[[str], None] = say

    def pending(self, landed: list[Landed]) -> list[Landed]:
        until = self.req.until_step
        return [c for c in landed if c.path.name not in self.state.gated and (until is None or c.step <= until)]

    def gate_ready(self, pending: list[Landed]) -> Iterator[TrendPoint]:
        """Gate the complete checkpoints in step order, up to the first one still being written."""
        for c in pending:
            if not c.complete:
                return
            try:
                point = self.gate(c.path)
            except (RegressError, OSError):
                if c.path.exists():
                    raise
                # rotated away (save_total_limit) before or while it was gated: the run has moved on
                self.emit(f"  step {c.step:>8}  {c.path} was removed before it was gated: skipped")
                continue
            self.state = record(self.req.out_dir, self.state, point)
            self.emit(line_of(point, self.req.out_dir / c.path.name / "report.html"))
            yield point

    def failed(self) -> bool:
        return any(p.verdict == "FAIL" for p in self.state.points)

    def stop_run(self) -> int:
        """--stop-on-fail at a FAIL: the STOP file the training script polls, exit 1."""
        first = next(p for p in self.state.points if p.verdict == "FAIL")
        stop = Path(self.req.run_dir) / STOP_FILE
        atomic_write(stop, f"regress: {first.path} FAILed (step {first.step}): stop training\n".encode())
        self.emit(f"FAIL at step {first.step}: wrote {stop}; stopping")
        return 1


def finished(w: Watch, landed: list[Landed], done: bool) -> bool:
    """Whether the watch stops after this poll: the run reached --until-step with every
    checkpoint up to it gated, or the sentinel was there before the poll and no checkpoint
    with a state file is left to settle (those without one never will: named, not gated)."""
    left = w.pending(landed)
    until = w.req.until_step
    if until is not None and not left and any(c.step >= until for c in landed):
        return True
    if done and not any(c.has_state for c in left):
        for c in left:
            w.emit(f"  step {c.step:>8}  {c.path} never got its {TRAINER_STATE}: not gated")
        return True
    return False


def run_watch(req: WatchRequest, emit: Callable[[str], None] = say, sleep: Callable[[float], None] = time.sleep) -> int:
    """``regress watch``: poll, gate what landed, stop as ``finished`` says; the exit code."""
    w = start(req, emit)
    if req.stop_on_fail and w.failed():  # resumed after a FAIL
        return w.stop_run()
    poller = Poller(Path(req.run_dir))
    while True:
        done = req.sentinel_file.exists()  # before the poll: what landed before the sentinel is gated
        landed = poller.poll()
        for point in w.gate_ready(w.pending(landed)):
            if req.stop_on_fail and point.verdict == "FAIL":
                return w.stop_run()
        if finished(w, landed, done):
            break
        sleep(req.poll)
    points = w.state.points
    return 1 if points and points[-1].verdict == "FAIL" else 0


def start(req: WatchRequest, emit: Callable[[str], None]) -> Watch:
    """Check every input before anything is written, evaluate the base (once: stored), and
    read the state of an earlier watch into the same folder."""
    from harness import pipeline
    from harness.report import write_report
    from harness.store import check_writable
    from harness.suites import suite_for

    run_dir, out = Path(req.run_dir), req.out_dir
    if req.until_step is not None and req.until_step < 0:
        raise RegressError(f"--until-step must be at least 0 (got {req.until_step})")
    if not req.poll > 0:
        raise RegressError(f"--poll must be above 0 seconds (got {req.poll})")
    if run_dir.exists() and not run_dir.is_dir():
        raise RegressError(f"run folder {run_dir} is not a folder")
    if not run_dir.exists() and not run_dir.resolve().parent.is_dir():
        raise RegressError(f"run folder {run_dir} cannot appear: {run_dir.resolve().parent} does not exist")
    suite = suite_for(req.config)
    policy = pipeline.build_policy(suite, req.policy_file)
    (base_ck,) = pipeline.preflight([req.base], suite, req.config, out)
    state = load_state(out, str(Path(req.base).resolve()), suite.name)
    if req.stop_on_fail and run_dir.exists():
        check_writable(run_dir, "run folder (for its STOP file)")
    base_run = pipeline.evaluate(base_ck, suite, req.config)

    def gate(path: Path) -> TrendPoint:
        _, ck = pipeline.preflight([req.base, str(path)], suite, req.config)  # the tokenizers' agreement too
        cand = pipeline.evaluate(ck, suite, req.config, reference=base_run.records, drafts_from=base_run.store_path)
        probe = pipeline.knowledge_probe(base_ck, ck, suite, req.config)
        cmp = pipeline.comparison_of(base_run, cand, suite, req.config.backend, policy, probe=probe)
        write_report(cmp, out / path.name)
        return TrendPoint(str(path), step_of(path), cmp.verdict.level, cmp.units, cmp.overall)

    emit(f"watching {run_dir} against {req.base} (suite {suite.name}); trend: {out / 'trend.html'}")
    if state.points:
        last = state.points[-1]
        emit(f"resuming: {len(state.points)} checkpoint(s) already gated, the last step {last.step} {last.verdict}")
        write_trend(state.base, list(state.points), out, "step")  # a kill between state and trend: made good
    return Watch(req, gate, state, emit)


def cmd_watch(a: argparse.Namespace) -> int:
    req = WatchRequest(a.base, a.run_dir, RunConfig.from_args(a), a.out, a.policy, a.until_step, a.sentinel,
                       a.stop_on_fail, a.poll)  # fmt: skip
    return run_watch(req)


@dataclass(frozen=True)
class WatchArgs:
    """``regress watch``'s own flags (the run's settings are ``RunConfig``'s)."""

    base: str = option(help="the base checkpoint")
    run_dir: str = option(positional=True, help="the trainer's output folder (its checkpoint-N folders)")
    out: str | None = option(None, help="reports, trend and state (default reports/watch-RUN)")
    policy: str | None = option(None, help="gate policy YAML overriding the defaults and the suite's")
    until_step: int | None = option(None, help="stop once the checkpoints up to step N are gated")
    sentinel: str | None = option(None, help=f"stop when this file exists (default RUN_DIR/{SENTINEL})")
    stop_on_fail: bool = option(False, help=f"at the first FAIL write RUN_DIR/{STOP_FILE} and exit 1")
    poll: float = option(10.0, help="seconds between looks at the run folder (default 10)")


def add_parser(sub: argparse._SubParsersAction, add_run_args: Callable[[argparse.ArgumentParser], None]) -> None:  # type: ignore[type-arg]
    w = sub.add_parser("watch", help="gate each checkpoint-N of a training run as it lands; exit 1 at a FAIL")
    add_arguments(w, WatchArgs)
    add_run_args(w)
    w.set_defaults(fn=cmd_watch)
