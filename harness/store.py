"""The record store: durable, resumable, keyed results of one checkpoint on one suite.

Layout of one run folder ``<store>/<label>-<key>/``::

    meta.json        what the key was made of (checkpoint, fingerprint, suite, backend...)
    answers.jsonl    every backend answer, appended chunk by chunk, fsynced (resume)
    records.jsonl    the per-item records, written once, atomically, when the run is complete
    lock             flock: exclusive for a writer, shared for readers of a complete run;
                     names its holder

The key is a hash of the checkpoint fingerprint, the suite's content hash, the backend and
its output-relevant settings, and ``FORMAT_VERSION``: a changed checkpoint, suite or
setting gets a new folder, and a base evaluated once is reused by every comparison.
A torn last line of ``answers.jsonl`` (a crash mid-write) is detected and dropped.
``check_writable(folder)`` proves a folder can be written (a probe file, removed at
once) without creating the folder, so bad input is caught before anything is written.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import hashlib
import json
import logging
import os
import shutil
import socket
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

from harness.errors import RegressError, StoreError
from harness.types import Generation, Loglik, Record, StoreSettings, Suite

if TYPE_CHECKING:
    from harness.config import RunConfig

# 2: multiple-choice targets are the gold choice text; 3: settings keyed per backend,
# defaults resolved; 4: one record per item across lm-eval's filters, ``metrics`` keyed
# "metric,filter"; 5: prompts past the model's context cut from the left as lm-eval does;
# 6: IFEval's language checks scored with langdetect seeded (``runner.seed_scorers``: before,
# a short answer's score was drawn at random) (runs stored before are listed as stale and
# never reused)
FORMAT_VERSION = 6
# the kinds of answers.jsonl's rows ("t") and what each holds ("v", as its ``to_dict`` writes it)
ANSWER_KINDS: dict[str, type[Generation] | type[Loglik]] = {"gen": Generation, "ll": Loglik}
Answer = Generation | Loglik
# what a run's key is made of (with FORMAT_VERSION), as meta.json stores them
KEY_PARTS = ("fingerprint", "suite_hash", "backend", "settings", "limit", "lm_eval", "noise_variant")
log = logging.getLogger(__name__)


@functools.cache  # asked per stored run by `regress baselines list`; fixed for the process
def lm_eval_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lm_eval")
    except PackageNotFoundError:
        return "unknown"


def run_key(parts: Mapping[str, Any]) -> str:
    blob = json.dumps({**parts, "format": FORMAT_VERSION}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class StoreMeta(TypedDict, total=False):
    """A run folder's ``meta.json``: the parts of its key (``KEY_PARTS``), the key, and what
    `regress baselines` needs to say what a run was and what changed."""

    fingerprint: str
    suite_hash: str
    backend: str
    settings: StoreSettings
    limit: int | None
    lm_eval: str  # lm-eval builds the prompts and scores
    noise_variant: int  # only in a noise-floor rerun's key
    key: str
    checkpoint: str
    suite: str
    suite_path: str
    data: str | None  # the data root asked for (--data, else $REGRESS_DATA), resolved
    files: dict[str, str]  # what the fingerprint was made of


def store_meta(path: str, fp: str, suite: Suite, cfg: RunConfig, files: Mapping[str, str] | None = None) -> StoreMeta:
    """The meta (and so the key) of checkpoint ``path`` (fingerprint ``fp``) on ``suite`` as
    ``cfg`` runs it. ``data`` is the data root as ``suites.data_root`` resolves it, so that
    `regress baselines` rebuilds the suite as it was run (the data files' hashes are in the
    suite hash)."""
    from harness.backends import output_settings
    from harness.suites import data_root

    meta = StoreMeta(
        fingerprint=fp,
        suite_hash=suite.content_hash,
        backend=cfg.backend,
        settings=output_settings(cfg.backend, cfg.options),
        limit=cfg.limit,
        lm_eval=lm_eval_version(),
    )
    if cfg.noise_variant:
        meta["noise_variant"] = cfg.noise_variant
    meta["key"] = run_key(meta)
    root = data_root(cfg.data)
    data = str(root) if root else None
    extra = StoreMeta(checkpoint=path, suite=suite.name, suite_path=suite.path, data=data, files=dict(files or {}))
    return {**meta, **extra}


def store_folder(store_dir: str | Path, meta: StoreMeta) -> Path:
    """The run folder of ``meta`` in store ``store_dir``: ``<label>-<key>``, the label the
    checkpoint folder's name. The same content under another name (a copy, a move) is the
    same run: a complete folder with the key is reused whatever its label."""
    label = Path(meta["checkpoint"]).name.replace(os.sep, "_")[:40] or "ckpt"
    own = Path(store_dir) / f"{label}-{meta['key']}"
    if not own.exists():
        done = [d for d in Path(store_dir).glob(f"*-{meta['key']}") if (d / "records.jsonl").is_file()]
        if done:
            return sorted(done)[0]
    return own


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file, fsync, rename."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise _os_error(e, path) from e
    _fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_folder(out: Path, what: str) -> Iterator[Path]:
    """Fill a temporary sibling of ``out`` (yielded), then fsync its files and rename it over
    ``out``; on any error remove it and leave ``out`` as it was. An ``OSError`` becomes a
    one-line ``RegressError`` naming ``what`` (e.g. "report") and ``out``."""
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        yield tmp
        for f in tmp.iterdir():
            with f.open("rb") as fh:
                os.fsync(fh.fileno())
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if e.errno == errno.ENOSPC:
            raise RegressError(f"out of disk space while writing {what} {out}") from e
        raise RegressError(f"cannot write {what} to {out}: {e.strerror or e}") from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _os_error(e: OSError, path: Path) -> StoreError:
    if e.errno == errno.ENOSPC:
        return StoreError(f"out of disk space while writing {path}")
    if e.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
        return StoreError(f"cannot write {path}: permission denied")
    return StoreError(f"cannot write {path}: {e.strerror or e}")


def check_writable(folder: Path, what: str) -> None:
    """Raise ``StoreError`` unless ``folder`` (existing or to be made) can be written.

    Probes the nearest existing ancestor by creating and removing a file, which also
    catches read-only mounts and full disks that ``os.access`` misses (it says yes to root).
    """
    anc = folder
    while not anc.exists() and anc != anc.parent:
        anc = anc.parent
    if not anc.is_dir():
        raise StoreError(f"{what} {folder} is not writable: {anc} is not a folder")
    probe = anc / f".regress-probe-{os.getpid()}"
    try:
        with probe.open("wb") as f:
            f.write(b"x")
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise StoreError(f"{what} {folder} is not writable: {e.strerror or e}") from e
    finally:
        try:
            probe.unlink()
        except OSError:
            pass


def lock_holder(folder: Path) -> str | None:
    """Who holds ``folder``'s lock (as its lock file names it), or None if it is free."""
    lock = folder / "lock"
    if not lock.is_file():
        return None
    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError:
        return None
    try:  # exclusive probe: any holder, writer or reader of a complete run, blocks it
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return os.pread(fd, 300, 0).decode(errors="replace").strip() or "another process"
    finally:
        os.close(fd)
    return None


class RunStore:
    """One run folder. Use as a context manager: ``with RunStore.open(dir, meta) as s``."""

    def __init__(self, path: Path, meta: Mapping[str, Any]) -> None:
        self.path = path
        self.meta = meta
        self._lock_fd: int | None = None
        self._shared = False
        self._answers: dict[str, dict[str, Answer]] | None = None
        self.dropped_torn_line = False

    @classmethod
    def open(cls, path: Path, meta: Mapping[str, Any]) -> RunStore:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise _os_error(e, path) from e
        store = cls(path, meta)
        store._lock()
        meta_file = path / "meta.json"
        if not meta_file.exists():
            atomic_write(meta_file, json.dumps(meta, indent=2, sort_keys=True).encode())
        return store

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- locking ----------------------------------------------------------------------

    def _lock(self) -> None:
        lock = self.path / "lock"
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise _os_error(e, lock) from e
        # A complete run is only read (a base shared by many parallel compares): a shared lock.
        # Each holder writes its name; with several readers the file names the latest.
        self._shared = (self.path / "records.jsonl").is_file()
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if self._shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 300, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise StoreError(f"store {self.path} is in use by {holder}; wait for it to finish or stop it") from None
        self._lock_fd = fd
        cmd = " ".join(Path(sys.argv[0]).name if i == 0 else a for i, a in enumerate(sys.argv[:6]))
        since = time.strftime("%Y-%m-%d %H:%M:%S")
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {since} ({cmd[:160]})".encode(), 0)
        except OSError:
            pass  # the holder's name is a courtesy; the flock is what excludes

    def _upgrade(self) -> None:
        """Writing into a complete run (new probe answers) needs the exclusive lock."""
        if not self._shared or self._lock_fd is None:
            return
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StoreError(f"store {self.path} is being read by another run; run again when it finishes") from None
        self._shared = False

    def close(self) -> None:
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    # -- answers (resume) -------------------------------------------------------------

    def _load_answers(self) -> dict[str, dict[str, Answer]]:
        out: dict[str, dict[str, Answer]] = {kind: {} for kind in ANSWER_KINDS}
        f = self.path / "answers.jsonl"
        if not f.exists():
            return out
        data = f.read_bytes()
        good = 0
        for line in data.splitlines(keepends=True):
            if not line.endswith(b"\n"):
                break  # torn tail: the writer died mid-line
            try:
                row = json.loads(line)
                out[row["t"]][row["k"]] = ANSWER_KINDS[row["t"]].from_dict(row["v"])
            except (ValueError, KeyError, TypeError):
                break  # a line the writer never finished (e.g. zeros after a power cut)
            good += len(line)
        if good != len(data):
            self.dropped_torn_line = True
            n = len(data) - good
            log.warning("%s: dropped %d bytes of an unfinished write; those answers are recomputed", f, n)
            try:
                self._upgrade()
                with f.open("r+b") as fh:
                    fh.truncate(good)
                    os.fsync(fh.fileno())
            except OSError as e:
                raise _os_error(e, f) from e
        return out

    def answers(self, kind: str) -> dict[str, Answer]:
        """The stored answers of ``kind`` ("gen" or "ll") by request key."""
        if self._answers is None:
            self._answers = self._load_answers()
        return self._answers[kind]

    def append(self, kind: str, pairs: Iterable[tuple[str, Answer]]) -> None:
        """Append answers durably (one write, fsync) before they count as done."""
        self._upgrade()
        pairs = list(pairs)
        rows = [json.dumps({"t": kind, "k": k, "v": v.to_dict()}) + "\n" for k, v in pairs]
        cache = self.answers(kind)
        f = self.path / "answers.jsonl"
        try:
            fd = os.open(f, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                data = memoryview("".join(rows).encode())
                while data:
                    data = data[os.write(fd, data) :]
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as e:
            raise _os_error(e, f) from e
        cache.update(pairs)

    # -- records ----------------------------------------------------------------------

    @property
    def complete(self) -> bool:
        return (self.path / "records.jsonl").is_file()

    def write_records(self, records: list[Record]) -> None:
        data = "".join(json.dumps(r.to_dict()) + "\n" for r in records).encode()
        atomic_write(self.path / "records.jsonl", data)

    def load_records(self) -> list[Record]:
        return read_records(self.path)


def read_records(folder: Path) -> list[Record]:
    f = folder / "records.jsonl"
    try:
        lines = f.read_text().splitlines()
    except OSError as e:
        raise StoreError(f"cannot read records in {folder}: {e.strerror}") from e
    try:
        return [Record.from_dict(json.loads(x)) for x in lines if x]
    except (ValueError, TypeError) as e:
        raise StoreError(f"corrupt records in {f}: {e}") from e
