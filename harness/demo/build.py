"""Build (or reuse) the demo checkpoints: ``regress demo --out DIR``.

Writes ordinary Hugging Face folders that ``AutoModelForCausalLM.from_pretrained`` loads
offline::

    DIR/base             tiny Llama trained on add, rev, sort, cmp (+ the format of count)
    DIR/ft-answer-only   base + counting repeats (with replay), loss on answer tokens only
    DIR/ft-all-tokens    the careless one: counting alone (no replay), the same steps, loss
                         on every token of the transcript
    DIR/ft-identical     a byte-for-byte copy of base under a new folder
    DIR/ft-no-eos        the same data trained on answers without the end-of-turn token
    DIR/ft-key-tokens    ft-all-tokens' examples, loss only on the answer tokens the base
                         does not already produce (``harness.demo.key_tokens``)

Training is seeded. The build is cached under a key made of the source of
``harness/demo/*.py``, the recipe and the torch/transformers versions (``DIR/BUILD.json``):
a second call with the same code returns at once, and a change to the fine-tune recipe
alone retrains only the fine-tunes. The folders are written to a temporary place and
renamed into ``DIR`` at the end, so an interrupted build leaves nothing half-made.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import hashlib
import json
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import torch
import transformers
from tqdm.auto import tqdm

from harness import sft
from harness.demo import key_tokens
from harness.demo import train as trainer
from harness.demo.tokenizer import build_tokenizer
from harness.demo.world import train_stream

FINE_TUNES = ("ft-identical", "ft-answer-only", "ft-all-tokens", "ft-no-eos", "ft-key-tokens")

# The recipe. The base mix shows the new skill's format with 2-4 repeats only.
BASE_MIX = {"add": 0.3, "rev": 0.25, "sort": 0.2, "cmp": 0.15, "count1": 0.1}
BASE = {"steps": 1000, "lr": 3e-3, "batch_size": 128, "seed": 0}
# Fine-tunes: half new skill, half replay of the base's skills (the remedy done right);
# the all-token variant trains on the new skill alone, with loss on its long, repetitive
# prompts too, and learns to write them. (With replay it sat on the edge between looping
# and babbling, and which one depended on the CPU's float kernels: it looped on an AMD
# build and babbled without exact loops on an Intel one. Without replay it collapsed
# into loops on the two bases tried, trained with Intel's AVX-512 and AVX2 kernels.)
FT_MIX = {"count": 0.5, "add": 0.2, "rev": 0.1, "sort": 0.1, "cmp": 0.1}
FT_MIXES = {"ft-all-tokens": {"count": 1.0}}
FT = {"steps": 60, "lr": 1e-3, "batch_size": 64, "seed": 1, "warmup": 5}
FT_LOSS = {"ft-answer-only": "answer", "ft-all-tokens": "all", "ft-no-eos": "answer_no_eot"}


# The files whose code decides the base (other modules here, e.g. the real-model build, do not).
BASE_SOURCES = ("__init__.py", "tokenizer.py", "train.py", "world.py")


def _digest(*parts: object) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(repr(part).encode() + b"\0")
    return h.hexdigest()[:16]


def base_key() -> str:
    """What decides the base: the world, tokenizer and trainer code, its recipe, versions."""
    here = Path(__file__).parent
    code = [(name, (here / name).read_bytes()) for name in BASE_SOURCES]
    return _digest(code, BASE_MIX, BASE, torch.__version__, transformers.__version__)


# Code beside this file that decides a fine-tune (ft-key-tokens: its trainer and the key-token tool).
FT_SOURCES = (Path(key_tokens.__file__), Path(key_tokens.__file__).parent / "steps.py", *sft.sources())


def build_key() -> str:
    """What decides the whole build: the base's key, this file (the fine-tune recipe) and FT_SOURCES."""
    return _digest(base_key(), Path(__file__).read_bytes(), *(f.read_bytes() for f in FT_SOURCES))


def _train(model, tok, mix, recipe, loss_on, desc):  # type: ignore[no-untyped-def]
    bar = tqdm(total=recipe["steps"], desc=desc, unit="step", leave=False, disable=None)

    def on_step(step: int, loss: float) -> None:
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3f}", refresh=False)

    info = trainer.train(
        model,
        tok,
        train_stream(mix, recipe["seed"]),
        steps=recipe["steps"],
        lr=recipe["lr"],
        batch_size=recipe["batch_size"],
        loss_on=loss_on,
        seed=recipe["seed"],
        warmup=recipe.get("warmup", 50),
        on_step=on_step,
    )
    bar.close()
    return info


def _train_key_tokens(work: Path, model, tok):  # type: ignore[no-untyped-def]
    bar = tqdm(total=FT["steps"], desc=f"demo {key_tokens.NAME}", unit="step", leave=False, disable=None)
    mix = FT_MIXES.get(key_tokens.DATA_OF, FT_MIX)
    info = key_tokens.build_key_tokens(work / "base", model, tok, work / key_tokens.NAME, mix, FT,
                                       on_step=lambda step, loss: bar.update(1))  # fmt: skip
    bar.close()
    return info


def _save(model, tok, path: Path) -> None:  # type: ignore[no-untyped-def]
    model.save_pretrained(str(path))
    tok.save_pretrained(str(path))


def _read_stamp(stamp: Path) -> dict:  # type: ignore[type-arg]
    try:
        return json.loads(stamp.read_text())
    except (OSError, ValueError):
        return {}


def build_demo(out: Path, force: bool = False) -> dict[str, Path]:
    """Build the demo checkpoints under ``out`` (reusing a cached build); return their paths."""

    names = ("base", *FINE_TUNES)
    paths = {n: out / n for n in names}
    key = build_key()
    stamp = out / "BUILD.json"
    if not force and _read_stamp(stamp).get("key") == key and all(p.is_dir() for p in paths.values()):
        return paths
    out.mkdir(parents=True, exist_ok=True)
    with _build_lock(out):
        # another process may have finished the same build while we waited for the lock
        if not force and _read_stamp(stamp).get("key") == key and all(p.is_dir() for p in paths.values()):
            return paths
        return _build(out, paths, key, force)


@contextlib.contextmanager
def _build_lock(out: Path) -> Iterator[None]:
    """One builder at a time per folder (tests and `make regress` may start together)."""
    with open(out / ".build.lock", "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for another build of the demo checkpoints in {out}...", file=sys.stderr)
            fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def _build(out: Path, paths: dict[str, Path], key: str, force: bool) -> dict[str, Path]:
    from transformers import LlamaForCausalLM

    names = tuple(paths)
    stamp = out / "BUILD.json"
    work = out / f".building-{key}"
    for stale in out.glob(".building-*"):  # a killed build's (we hold the lock: no build is running)
        shutil.rmtree(stale, ignore_errors=True)
    work.mkdir()
    t0 = time.perf_counter()
    old = _read_stamp(stamp)
    reuse_base = not force and old.get("base_key") == base_key() and (out / "base").is_dir()
    what = "fine-tunes" if reuse_base else "base and fine-tunes (about 5 minutes on 2 cores)"
    print(f"building the demo checkpoints in {out}: {what}", file=sys.stderr)
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        tok = build_tokenizer()
        if reuse_base:  # only the fine-tune recipe changed
            base = LlamaForCausalLM.from_pretrained(str(out / "base"))
            info = {"base": old.get("train", {}).get("base", {})}
            shutil.copytree(out / "base", work / "base")
        else:
            torch.manual_seed(BASE["seed"])
            base = LlamaForCausalLM(trainer.base_config(tok))
            info = {"base": _train(base, tok, BASE_MIX, BASE, "answer", "demo base")}
            _save(base, tok, work / "base")
        shutil.copytree(work / "base", work / "ft-identical")
        for name, loss_on in FT_LOSS.items():
            model = copy.deepcopy(base)
            info[name] = _train(model, tok, FT_MIXES.get(name, FT_MIX), FT, loss_on, f"demo {name}")
            _save(model, tok, work / name)
        info[key_tokens.NAME] = _train_key_tokens(work, copy.deepcopy(base), tok)
    except BaseException:  # Ctrl-C or an error: nothing half-built stays behind
        shutil.rmtree(work, ignore_errors=True)
        raise
    finally:
        torch.set_num_threads(prev_threads)
    for n in names:
        if paths[n].exists():
            shutil.rmtree(paths[n])
        (work / n).rename(paths[n])
    shutil.rmtree(work, ignore_errors=True)
    stamp.write_text(
        json.dumps({"key": key, "base_key": base_key(), "seconds": time.perf_counter() - t0, "train": info}, indent=2)
    )
    return paths
