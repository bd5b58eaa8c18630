"""Checkpoints: validate a local Hugging Face folder and fingerprint its content.

``validate(path)`` raises a one-line ``CheckpointError`` for a missing path, a folder
without ``config.json``, missing or truncated weights, or a missing tokenizer, before any
engine is started. ``fingerprint(path)`` hashes what decides the model's answers: the
config, generation config, tokenizer files, chat template and every weight file (size
and content), so a changed checkpoint never reuses a stale baseline. Content hashes of
large files are cached by (path, size, mtime, inode) so a second call is instant.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path
from typing import Any

from harness.errors import CheckpointError

WEIGHT_GLOBS = ("*.safetensors", "pytorch_model*.bin", "model*.bin", "*.pt")
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
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
)
_HASH_CACHE = Path(os.environ.get("REGRESS_CACHE", Path.home() / ".cache" / "regress")) / "file-hashes.json"


def weight_files(path: Path) -> list[Path]:
    files: set[Path] = set()
    for g in WEIGHT_GLOBS:
        files.update(path.glob(g))
    return sorted(files)


def _check_safetensors(f: Path) -> None:
    size = f.stat().st_size
    try:
        with f.open("rb") as fh:
            (hlen,) = struct.unpack("<Q", fh.read(8))
            if hlen <= 0 or 8 + hlen > size:
                raise ValueError("header length past end of file")
            header = json.loads(fh.read(hlen))
    except (struct.error, ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"corrupt weight file {f}: {e}") from e
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + hlen + end != size:
        raise CheckpointError(f"truncated weight file {f}: {size} bytes, header says {8 + hlen + end}")


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
        elif w.stat().st_size == 0:
            raise CheckpointError(f"empty weight file {w}")
    if not any((p / t).is_file() for t in TOKENIZER_FILES):
        raise CheckpointError(f"no tokenizer in checkpoint {path} (need one of {', '.join(TOKENIZER_FILES)})")
    return p.resolve()


def load_tokenizer(path: str | Path, trust_remote_code: bool = False) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise CheckpointError(f"cannot load tokenizer of {path}: {str(e).splitlines()[0]}") from e


def _load_hash_cache() -> dict[str, str]:
    try:
        return json.loads(_HASH_CACHE.read_text())
    except (OSError, ValueError):
        return {}


def _save_hash_cache(cache: dict[str, str]) -> None:
    try:
        _HASH_CACHE.parent.mkdir(parents=True, exist_ok=True)
        tmp = _HASH_CACHE.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache))
        os.replace(tmp, _HASH_CACHE)
    except OSError:
        pass  # the cache only saves time


def file_hash(f: Path, cache: dict[str, str] | None = None) -> str:
    """sha256 of a file's content, memoised on (path, size, mtime, inode)."""
    st = f.stat()
    key = f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}"
    if cache is not None and key in cache:
        return cache[key]
    with f.open("rb") as fh:
        digest = hashlib.file_digest(fh, "sha256").hexdigest()
    if cache is not None:
        cache[key] = digest
    return digest


def fingerprint(path: str | Path) -> str:
    """A short content fingerprint of the checkpoint (hex, 16 chars)."""
    p = Path(path)
    cache = _load_hash_cache()
    h = hashlib.sha256()
    for name in META_FILES:
        f = p / name
        if f.is_file():
            h.update(f"{name}\0{file_hash(f)}\0".encode())
    for w in weight_files(p):
        h.update(f"{w.name}\0{w.stat().st_size}\0{file_hash(w, cache)}\0".encode())
    _save_hash_cache(cache)
    return h.hexdigest()[:16]
