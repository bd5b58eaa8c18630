"""Checkpoints: validate a local Hugging Face folder and fingerprint its content.

``validate(path)`` raises a one-line ``CheckpointError`` for a missing path, a folder
without ``config.json``, missing, corrupt or truncated weights (safetensors headers and
sizes, zip directories of ``.bin`` files, shards named by an index), or a missing
tokenizer, before any engine is started.

``fingerprint(path)`` hashes what decides the model's answers: the config, generation
config, tokenizer files, chat template(s), custom code and every weight file (name, size
and content), so a changed checkpoint never reuses a stale baseline. Weight files are
hashed as a tree (sha256 of the sha256 of each 16 MiB block), block by block on a thread
pool, so a many-GB checkpoint hashes at disk speed or at cores x ~0.7 GB/s, whichever is
lower (``bench/fingerprint.py`` measures it). Content hashes are cached in
``$REGRESS_CACHE/file-hashes.json`` keyed by (path, size, mtime, ctime, inode, device):
a second call costs a ``stat`` per file. ``ctime`` cannot be set from user space, so a
rewrite that restores the old mtime (``cp -p``, ``rsync -t``) is still seen; and, as git
does for "racily clean" files, a file changed within the last few seconds is never cached,
so a change within one timestamp tick cannot hide either.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
import threading
import time
import zipfile
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from harness import defaults
from harness.errors import CheckpointError
from harness.types import LoadedCheckpoint

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tiktoken.model", "vocab.txt")
META_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "chat_template.json",
    "tokenizer.model",
    "tiktoken.model",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "added_tokens.json",
    "model.safetensors.index.json",
    "pytorch_model.bin.index.json",
)
META_GLOBS = ("additional_chat_templates/*.jinja", "*.py")  # extra templates; remote code
BLOCK = 16 << 20  # tree-hash block: parallel unit and read size
RACY_S = 3.0  # a file modified this recently is hashed but not cached
_SAFETENSORS_DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
}  # fmt: skip


# -- which files ----------------------------------------------------------------------


def _index_shards(path: Path) -> list[Path] | None:
    """Shards named by a ``*.index.json`` (None if the checkpoint is not sharded)."""
    for name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        idx = path / name
        if idx.is_file():
            try:
                weight_map = json.loads(idx.read_text())["weight_map"]
                shards = sorted({str(v) for v in weight_map.values()})
            except (ValueError, KeyError, TypeError, AttributeError) as e:
                raise CheckpointError(f"corrupt shard index {idx}: {e}") from e
            missing = [s for s in shards if not (path / s).is_file()]
            if missing:
                raise CheckpointError(f"checkpoint {path} is incomplete: shard {missing[0]} named in {name} is missing")
            return [path / s for s in shards]
    return None


def weight_files(path: Path) -> list[Path]:
    """The weight files transformers would load, in its order of preference.

    safetensors win over ``.bin``; optimizer/scheduler states of a trainer checkpoint
    (``optimizer.pt``, ``training_args.bin``) are not weights and are neither checked nor
    hashed (they are often twice the model's size).
    """
    shards = _index_shards(path)
    if shards is not None:
        return shards
    for globs in (("*.safetensors",), ("pytorch_model*.bin", "model*.bin")):
        files = sorted({f for g in globs for f in path.glob(g) if f.is_file()})
        if files:
            return files
    return []


def _meta_files(path: Path) -> list[Path]:
    files = [path / n for n in META_FILES if (path / n).is_file()]
    for g in META_GLOBS:
        files.extend(sorted(f for f in path.glob(g) if f.is_file()))
    return files


# -- validation -----------------------------------------------------------------------


def _check_safetensors(f: Path) -> None:
    size = f.stat().st_size
    try:
        with f.open("rb") as fh:
            (hlen,) = struct.unpack("<Q", fh.read(8))
            if hlen <= 0 or 8 + hlen > size:
                raise ValueError("header length past end of file")
            header = json.loads(fh.read(hlen))
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
        end = 0
        for name, v in header.items():
            if name == "__metadata__":
                continue
            start, stop = v["data_offsets"]
            width = _SAFETENSORS_DTYPE_BYTES.get(v["dtype"])
            need = None if width is None else width * math.prod(v["shape"])
            if need is not None and stop - start != need:
                raise ValueError(f"tensor {name} has {stop - start} bytes, its shape needs {need}")
            end = max(end, stop)
    except (struct.error, ValueError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(f"corrupt weight file {f}: {e}") from e
    if 8 + hlen + end != size:
        raise CheckpointError(f"truncated weight file {f}: {size} bytes, header says {8 + hlen + end}")


def _check_bin(f: Path) -> None:
    if f.stat().st_size == 0:
        raise CheckpointError(f"empty weight file {f}")
    with f.open("rb") as fh:
        is_zip = fh.read(4) == b"PK\x03\x04"
    if is_zip:  # torch.save's format since 1.6: the central directory sits at the end
        try:
            with zipfile.ZipFile(f) as z:
                z.namelist()
        except (zipfile.BadZipFile, OSError) as e:
            raise CheckpointError(f"corrupt or truncated weight file {f}: {e}") from e


def validate(path: str | Path) -> Path:
    """Check that ``path`` is a loadable checkpoint folder; return it resolved."""
    p = Path(path).expanduser()
    if not p.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if not p.is_dir():
        raise CheckpointError(f"checkpoint is not a folder: {path}")
    cfg = p / "config.json"
    if not cfg.is_file():
        raise CheckpointError(f"not a checkpoint (no config.json): {path}")
    try:
        json.loads(cfg.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"unreadable config.json in {path}: {e}") from e
    weights = weight_files(p)
    if not weights:
        raise CheckpointError(f"no weight files (*.safetensors or *.bin) in checkpoint {path}")
    for w in weights:
        if w.suffix == ".safetensors":
            _check_safetensors(w)
        else:
            _check_bin(w)
    if not any((p / t).is_file() for t in TOKENIZER_FILES):
        raise CheckpointError(f"no tokenizer in checkpoint {path} (need one of {', '.join(TOKENIZER_FILES)})")
    return p.resolve()


def load_tokenizer(path: str | Path, trust_remote_code: bool = False) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"cannot load tokenizer of {path}: {msg}") from e
    except Exception as e:  # noqa: BLE001 - tokenizers raises its own Exception subclass on corrupt JSON
        raise CheckpointError(f"cannot load tokenizer of {path}: {type(e).__name__}: {e}") from e


def compare_tokenizers(base: Any, cand: Any, base_path: str | Path, cand_path: str | Path) -> str | None:
    """None if the two checkpoints tokenize alike; a warning if their tokenizer files
    differ but the vocabularies (token -> id) match; ``CheckpointError`` if they do not."""
    if tokenizer_digest(Path(base_path)) == tokenizer_digest(Path(cand_path)):
        return None
    vb, vc = base.get_vocab(), cand.get_vocab()
    if vb != vc:
        only_b, only_c = len(vb.keys() - vc.keys()), len(vc.keys() - vb.keys())
        moved = sum(1 for k in vb.keys() & vc.keys() if vb[k] != vc[k])
        raise CheckpointError(
            f"base and candidate have different vocabularies ({len(vb)} vs {len(vc)} tokens; {only_b} only in base, "
            f"{only_c} only in candidate, {moved} with other ids): their answers cannot be compared item by item"
        )
    return f"base and candidate tokenizer files differ ({base_path} vs {cand_path}), but their vocabularies match"


def tokenizer_digest(path: Path) -> str:
    h = hashlib.sha256()
    for name in (*TOKENIZER_FILES, "merges.txt", "added_tokens.json", "special_tokens_map.json"):
        f = path / name
        if f.is_file():
            h.update(f"{name}\0".encode() + hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()


# -- hashing --------------------------------------------------------------------------


def _cache_file() -> Path:
    return defaults.cache_dir() / "file-hashes.json"


def _load_hash_cache() -> dict[str, list[Any]]:
    try:
        data = json.loads(_cache_file().read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _save_hash_cache(cache: dict[str, list[Any]]) -> None:
    f = _cache_file()
    try:
        f.parent.mkdir(parents=True, exist_ok=True)
        live = {k: v for k, v in cache.items() if os.path.exists(k)}  # forget deleted files
        tmp = f.with_name(f".{f.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(live))
        os.replace(tmp, f)
    except OSError:
        pass  # the cache only saves time


def _stat_key(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]


_buffers = threading.local()


def _hash_block(fd: int, offset: int, length: int) -> bytes:
    # one reused buffer per thread: a fresh 16 MiB allocation per block costs page faults
    buf = getattr(_buffers, "buf", None)
    if buf is None or len(buf) < length:
        buf = _buffers.buf = bytearray(max(length, BLOCK))
    view = memoryview(buf)[:length]
    got = 0
    while got < length:
        n = os.preadv(fd, [view[got:]], offset + got)
        if n == 0:
            raise CheckpointError(f"file shrank while being hashed (fd {fd}, offset {offset + got})")
        got += n
    return hashlib.sha256(view).digest()


def hash_files(files: list[Path], use_cache: bool = True, threads: int | None = None) -> dict[Path, str]:
    """Content digest of each file: sha256 over (size, the sha256 of each BLOCK).

    All blocks of all files not in the cache are hashed on one thread pool (hashlib and
    ``os.pread`` release the GIL), so one big file or many shards use every core.
    """
    cache = _load_hash_cache() if use_cache else {}
    out: dict[Path, str] = {}
    todo: list[tuple[Path, os.stat_result]] = []
    for f in files:
        st = f.stat()
        hit = cache.get(str(f.resolve()))
        if hit is not None and hit[:-1] == _stat_key(st):
            out[f] = hit[-1]
        else:
            todo.append((f, st))
    if not todo:
        return out
    started = time.time()
    n = threads or defaults.hash_threads() or min(os.cpu_count() or 1, 16)
    fds = [os.open(f, os.O_RDONLY) for f, _ in todo]
    try:
        with ThreadPoolExecutor(max_workers=n) as pool:
            jobs = [
                [pool.submit(_hash_block, fd, off, min(BLOCK, st.st_size - off)) for off in range(0, st.st_size, BLOCK)]
                for fd, (_, st) in zip(fds, todo)
            ]
            for (f, st), blocks in zip(todo, jobs):
                h = hashlib.sha256(f"regress-tree-v1\0{st.st_size}\0".encode())
                for b in blocks:
                    h.update(b.result())
                out[f] = h.hexdigest()
    finally:
        for fd in fds:
            os.close(fd)
    if use_cache:
        for f, st in todo:
            after = f.stat()
            if _stat_key(after) != _stat_key(st):
                raise CheckpointError(f"{f} changed while it was being hashed")
            if max(st.st_mtime_ns, st.st_ctime_ns) / 1e9 < started - RACY_S:
                cache[str(f.resolve())] = [*_stat_key(st), out[f]]
        _save_hash_cache(cache)
    return out


def fingerprint_files(path: str | Path) -> dict[str, str]:
    """Digest of every file that decides the answers, by name relative to ``path``."""
    p = Path(path)
    metas = _meta_files(p)
    weights = weight_files(p)
    digests = hash_files(weights)
    out = {f.relative_to(p).as_posix(): hashlib.sha256(f.read_bytes()).hexdigest() for f in metas}
    for w in weights:
        out[w.relative_to(p).as_posix()] = digests[w]
    return out


def fingerprint_of(files: Mapping[str, str]) -> str:
    """The fingerprint of a ``fingerprint_files`` map; names starting with "@" are notes
    (a hub commit, an adapter's base folder), not content, and are left out."""
    content = {k: v for k, v in files.items() if not k.startswith("@")}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]


def fingerprint(path: str | Path) -> str:
    """A short content fingerprint of the checkpoint (hex, 16 chars)."""
    return fingerprint_of(fingerprint_files(path))


def changed_files(old: dict[str, str], new: dict[str, str]) -> list[str]:
    """Names of files added, removed or changed between two ``fingerprint_files`` maps."""
    return sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))


# -- loaded once per run --------------------------------------------------------------


def read(path: Path, tokenizer: Any) -> LoadedCheckpoint:
    """A validated checkpoint (``validate``'s resolved path) and its loaded tokenizer, read
    once per run: fingerprint and end-of-turn setup, shared by the store key, the backend
    and the probes."""
    from harness.probes import eot_setup

    files = fingerprint_files(path)
    return LoadedCheckpoint(str(path), fingerprint_of(files), files, tokenizer, eot_setup(path, tokenizer))


def load(path: str | Path, trust_remote_code: bool = False) -> LoadedCheckpoint:
    """``validate``, load the tokenizer, ``read``: one checkpoint on its own (tests, bench)."""
    p = validate(path)
    return read(p, load_tokenizer(p, trust_remote_code))
