"""``regress baselines list|show|prune``: what the record store holds, and cleaning it.

The store (``baselines/`` by default, ``--store`` or ``$REGRESS_STORE``) has one folder per
(checkpoint content, suite content, backend, settings, record format): see
``harness.store``. A base is evaluated once and its folder reused by every comparison.

* ``list``: one line per run folder: status (complete, partial with N answers kept for
  resume, or running and who holds it), checkpoint, suite, backend, records, size, age,
  and whether it is stale: its checkpoint is gone, or its files (weights, config,
  tokenizer, chat template) or its suite's files have changed since, or lm-eval has, or it
  was stored by an older regress (another record format or keyed settings). Stale records
  are never reused (their key no longer matches); ``prune --stale`` removes them.
* ``show REF``: one folder in full (REF: a key or the folder's name, or a prefix of one), with
  what changed when it is stale, and per-task counts and scores.
* ``prune``: remove folders by ``--stale``, ``--incomplete``, ``--older-than DAYS``,
  ``--key REF`` or ``--all``; ``--dry-run`` only says what it would remove. A folder in
  use by a running process is never removed.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import adapters
from harness import checkpoint as ckpt
from harness.detectors import is_nonterminated
from harness.errors import RegressError, StoreError
from harness.store import KEY_PARTS, lm_eval_version, lock_holder, read_records, run_key


@dataclass(frozen=True)
class RunInfo:
    """One run folder of the store, as found on disk."""

    path: Path
    meta: dict[str, Any]
    complete: bool
    n_answers: int
    size: int
    mtime: float
    holder: str | None

    @property
    def key(self) -> str:
        return str(self.meta.get("key") or self.path.name.rsplit("-", 1)[-1])

    @property
    def status(self) -> str:
        if self.holder:
            return "running"
        return "complete" if self.complete else "partial"


def _folder_size(d: Path) -> int:
    return sum(f.stat().st_size for f in d.iterdir() if f.is_file())


def _count_lines(f: Path) -> int:
    try:
        with f.open("rb") as fh:
            return sum(1 for line in fh if line.endswith(b"\n"))
    except OSError:
        return 0


def scan(store: str | Path) -> list[RunInfo]:
    """Every run folder of ``store`` (one with a meta.json), oldest first."""
    root = Path(store)
    if not root.is_dir():
        return []
    out = []
    for d in sorted(root.iterdir()):
        meta_file = d / "meta.json"
        if not meta_file.is_file():
            continue
        try:
            meta = json.loads(meta_file.read_text())
        except (OSError, ValueError):
            meta = {}
        records = d / "records.jsonl"
        complete = records.is_file()
        mtime = (records if complete else meta_file).stat().st_mtime
        out.append(
            RunInfo(d, meta, complete, _count_lines(d / "answers.jsonl"), _folder_size(d), mtime, lock_holder(d))
        )
    return sorted(out, key=lambda r: r.mtime)


def find(store: str | Path, ref: str) -> RunInfo:
    runs = scan(store)
    exact = [r for r in runs if r.path.name == ref or r.key == ref]
    hits = exact or [r for r in runs if r.key.startswith(ref) or r.path.name.startswith(ref)]
    if not hits:
        raise StoreError(f"no run {ref!r} in store {store} ({len(runs)} runs; see `regress baselines list`)")
    if len(hits) > 1:
        raise StoreError(f"{ref!r} matches {len(hits)} runs in {store}: {', '.join(r.path.name for r in hits)}")
    return hits[0]


def staleness(run: RunInfo) -> str | None:
    """Why ``run``'s records would not be reused today (None: they would be)."""
    meta = run.meta
    if "fingerprint" in meta:
        parts = {k: meta[k] for k in KEY_PARTS if k in meta}
        if run_key(parts) != meta.get("key"):
            return "stored by an older regress (record format or keyed settings changed)"
        if meta.get("lm_eval") != lm_eval_version():
            return f"lm-eval changed ({meta.get('lm_eval')} -> {lm_eval_version()})"
    path = meta.get("checkpoint")
    if not path or not Path(path).is_dir():
        return f"checkpoint {path} is gone"
    try:
        files = adapters.current_files(Path(path), run.meta.get("files") or {})
    except (RegressError, OSError) as e:
        return f"checkpoint unreadable: {e}"
    if ckpt.fingerprint_of(files) != run.meta.get("fingerprint"):
        changed = ckpt.changed_files(run.meta.get("files") or {}, files)
        what = ", ".join(changed[:4]) + (" ..." if len(changed) > 4 else "") if run.meta.get("files") else "its files"
        return f"checkpoint changed ({what})"
    suite_path = run.meta.get("suite_path")
    if suite_path:
        from harness.suites import load_suite

        try:
            suite_hash = load_suite(suite_path, run.meta.get("data")).content_hash
        except RegressError as e:
            return f"suite unreadable: {e}"
        if suite_hash != run.meta.get("suite_hash"):
            return f"suite {run.meta.get('suite')} changed"
    return None


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def _age(t: float) -> str:
    s = max(0.0, time.time() - t)
    for unit, width in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= width:
            return f"{s / width:.0f}{unit}"
    return f"{s:.0f}s"


def _records_count(run: RunInfo) -> str:
    return str(_count_lines(run.path / "records.jsonl")) if run.complete else f"({run.n_answers} answers)"


def format_list(store: str | Path, verify: bool = True) -> str:
    runs = scan(store)
    if not runs:
        return f"no runs in store {store}"
    rows = [("KEY", "STATUS", "CHECKPOINT", "SUITE", "BACKEND", "RECORDS", "SIZE", "AGE", "STALE")]
    for r in runs:
        stale = (staleness(r) or "-") if verify else "?"
        ckpt_name = Path(str(r.meta.get("checkpoint", "?"))).name
        limit = r.meta.get("limit")
        suite = f"{r.meta.get('suite', '?')}" + (f" (limit {limit})" if limit else "")
        rows.append(
            (r.key, r.status, ckpt_name, suite, str(r.meta.get("backend", "?")), _records_count(r), _size(r.size),
             _age(r.mtime), stale)
        )  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[-1] for row in rows]
    return "\n".join(x.rstrip() for x in lines)


def format_show(store: str | Path, ref: str) -> str:
    r = find(store, ref)
    m = r.meta
    lines = [
        f"run         {r.path}",
        f"key         {r.key}",
        f"status      {r.status}" + (f" (held by {r.holder})" if r.holder else ""),
        f"checkpoint  {m.get('checkpoint')}  fingerprint {m.get('fingerprint')}",
        f"suite       {m.get('suite')} ({m.get('suite_path', '?')})  hash {m.get('suite_hash')}",
        f"backend     {m.get('backend')}  settings {json.dumps(m.get('settings', {}))}  limit {m.get('limit')}",
        f"stored      {_records_count(r)} records, {r.n_answers} answers, {_size(r.size)}, {_age(r.mtime)} old",
        f"stale       {staleness(r) or 'no: reused by every comparison with this checkpoint and suite'}",
    ]
    if r.complete:
        by_task: dict[str, list[float]] = defaultdict(list)
        finish: dict[str, int] = defaultdict(int)
        for rec in read_records(r.path):
            by_task[rec.task].append(rec.score)
            if is_nonterminated(rec.finish):
                finish[rec.task] += 1
        lines.append("tasks")
        for task, scores in by_task.items():
            lines.append(f"  {task:24s} n={len(scores):6d}  score={sum(scores) / len(scores):.3f}  "
                         f"hit token limit={finish[task]}")  # fmt: skip
    return "\n".join(lines)


def _remove(run: RunInfo) -> bool:
    """Remove ``run``'s folder unless a process holds it; True if removed."""
    lock = run.path / "lock"
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise StoreError(f"cannot remove {run.path}: {e.strerror}") from e
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        try:
            shutil.rmtree(run.path)
        except OSError as e:
            raise StoreError(f"cannot remove {run.path}: {e.strerror}") from e
        return True
    finally:
        os.close(fd)


def prune(
    store: str | Path,
    *,
    stale: bool = False,
    incomplete: bool = False,
    older_than_days: float | None = None,
    keys: tuple[str, ...] = (),
    everything: bool = False,
    dry_run: bool = False,
) -> str:
    """Remove the run folders that match any of the criteria; return what was done."""
    if not (stale or incomplete or older_than_days is not None or keys or everything):
        raise RegressError("prune what? give --stale, --incomplete, --older-than DAYS, --key REF or --all")
    chosen: dict[Path, tuple[RunInfo, str]] = {}
    for ref in keys:
        r = find(store, ref)
        chosen[r.path] = (r, "asked for")
    for r in scan(store):
        if r.path in chosen:
            continue
        why = None
        if everything:
            why = "all"
        elif incomplete and not r.complete:
            why = f"incomplete ({r.n_answers} answers)"
        elif older_than_days is not None and time.time() - r.mtime > older_than_days * 86400:
            why = f"older than {older_than_days:g} days"
        elif stale:
            why = staleness(r)
        if why:
            chosen[r.path] = (r, why)
    lines, freed = [], 0
    for r, why in chosen.values():
        if r.holder or (not dry_run and not _remove(r)):
            lines.append(f"kept     {r.path.name}: in use by {r.holder or 'another process'}")
            continue
        freed += r.size
        lines.append(f"{'would remove' if dry_run else 'removed':8s} {r.path.name}: {why}")
    verb = "would free" if dry_run else "freed"
    lines.append(f"{len([x for x in lines if not x.startswith('kept')])} run(s), {verb} {_size(freed)}")
    return "\n".join(lines)
