"""How fast ``harness.checkpoint.fingerprint`` is on a many-GB checkpoint.

    python bench/fingerprint.py [--gb 4] [--shards 2] [--dir /tmp] [--keep]

Writes a fake checkpoint of real (not sparse) data: ``config.json``, a tokenizer file and
``--shards`` weight files of ``--gb`` GB in total, then measures, in GB/s of weights:

* ``cold``: the first fingerprint, pages evicted from the page cache first
  (``posix_fadvise(DONTNEED)`` after fsync; also ``drop_caches`` when run as root), so the
  disk is read: what a freshly downloaded 20 GB checkpoint costs;
* ``warm, 1 thread`` and ``warm, N threads``: the hashing itself (data in the page cache);
* ``plain sha256``: ``hashlib.file_digest`` of each file in turn, one core, warm (the
  single-threaded hash regress used before the tree hash), for reference;
* ``cached``: a second fingerprint, answered by the stat-keyed hash cache (what every
  comparison after the first pays).

Prints one line per measure and a JSON summary with the projected time for 20 GB.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness import checkpoint as ckpt  # noqa: E402

CHUNK = 64 << 20


def make_checkpoint(d: Path, gb: float, shards: int) -> list[Path]:
    (d / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 4096}))
    (d / "tokenizer.json").write_text(json.dumps({"model": {"vocab": {"a": 0}}}))
    block = os.urandom(CHUNK)
    per = int(gb * (1 << 30)) // shards
    files = []
    for i in range(shards):
        f = d / f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        with f.open("wb") as fh:
            left = per
            while left > 0:
                n = min(left, CHUNK)
                # vary each chunk a little so no block repeats
                fh.write(block[: n - 8] + left.to_bytes(8, "little") if n > 8 else block[:n])
                left -= n
            fh.flush()
            os.fsync(fh.fileno())
        files.append(f)
    return files


def evict(files: list[Path]) -> str:
    for f in files:
        fd = os.open(f, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return "fadvise+drop_caches"
    except OSError:
        return "fadvise"


def timed(fn) -> float:  # type: ignore[no-untyped-def]
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gb", type=float, default=4.0)
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--dir", default=tempfile.gettempdir())
    ap.add_argument("--keep", action="store_true")
    a = ap.parse_args()

    root = Path(tempfile.mkdtemp(prefix="regress-fp-bench-", dir=a.dir))
    os.environ["REGRESS_CACHE"] = str(root / "cache")
    ck = root / "ckpt"
    ck.mkdir()
    try:
        t = time.perf_counter()
        files = make_checkpoint(ck, a.gb, a.shards)
        size = sum(f.stat().st_size for f in files) / 1e9
        print(f"wrote {size:.2f} GB in {len(files)} files under {ck} ({size / (time.perf_counter() - t):.2f} GB/s)")
        time.sleep(ckpt.RACY_S + 0.5)  # older than the racy window, so the first fingerprint is cached

        how = evict(files)
        fp = None

        def first() -> None:
            nonlocal fp
            fp = ckpt.fingerprint(ck)

        cold = timed(first)
        cached = timed(lambda: ckpt.fingerprint(ck))
        threads = min(os.cpu_count() or 1, 16)
        warm_1 = timed(lambda: ckpt.hash_files(files, use_cache=False, threads=1))
        warm_n = timed(lambda: ckpt.hash_files(files, use_cache=False, threads=threads))

        def plain() -> None:
            for f in files:
                with f.open("rb") as fh:
                    hashlib.file_digest(fh, "sha256")

        plain_s = timed(plain)
        rows = {
            f"cold ({how}), {threads} threads": cold,
            "warm, 1 thread": warm_1,
            f"warm, {threads} threads": warm_n,
            "plain sha256 (1 core, warm)": plain_s,
            "cached (stat-keyed hash cache)": cached,
        }
        for name, s in rows.items():
            print(f"{name:36s} {s:8.3f} s  {size / s:9.2f} GB/s   20 GB: {20 / (size / s):7.2f} s")
        summary = {
            "gb": round(size, 3), "files": len(files), "cpus": os.cpu_count(), "threads": threads, "fingerprint": fp,
            "gb_per_s": {k: round(size / s, 3) for k, s in rows.items()},
            "seconds_for_20gb": {k: round(20 / (size / s), 2) for k, s in rows.items()},
        }  # fmt: skip
        print(json.dumps(summary))
    finally:
        if not a.keep:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
