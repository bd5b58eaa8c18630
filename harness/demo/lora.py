"""LoRA adapters of the demo base, as PEFT saves them (for the adapter tests and docs).

``build_loras(base, out)`` trains, once, rank-8 LoRA adapters of the demo base with the
demo's own trainer and data, and writes, under ``out``::

    lora-all-tokens          the careless recipe of ft-all-tokens (the new skill alone,
                             loss on every token) as a rank-8 LoRA on every linear layer,
                             fewer and smaller steps at a higher learning rate
    lora-all-tokens-merged   the same adapter merged into the base (``merge_and_unload``),
                             saved as an ordinary checkpoint folder
    lora-answer-only         ft-answer-only's recipe (replay, loss on answers) as a LoRA
    lora-short               the careless recipe, a quarter of the steps
    lora-untrained           an adapter as PEFT makes it before training: its B matrices
                             are zero, so it changes nothing (the "dropped adapter" case)
    lora-other-base          an adapter of another base (hidden size 64, not 128)

The build is cached under a key of this file's source, the base's fingerprint and the
torch, transformers and peft versions (``out/BUILD.json``); folders are made in a
temporary place and renamed into ``out``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from harness.demo.derived import Recipe

NAMES = ("lora-all-tokens", "lora-all-tokens-merged", "lora-answer-only", "lora-short", "lora-untrained",
         "lora-other-base")  # fmt: skip
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
RANK, ALPHA, LR, WARMUP = 8, 16, 1e-2, 3  # every demo adapter's shape and schedule
RECIPES = {  # name -> (mix, loss on, steps, batch size, seed): small, so that a test session can train them
    "lora-all-tokens": ({"count": 1.0}, "all", 30, 16, 1),
    "lora-answer-only": ({"count": 0.5, "add": 0.2, "rev": 0.1, "sort": 0.1, "cmp": 0.1}, "answer", 10, 8, 1),
    "lora-short": ({"count": 1.0}, "all", 5, 8, 2),
}


def build_key(base: Path) -> str:
    import peft
    import torch
    import transformers

    from harness.checkpoint import fingerprint

    versions = (torch.__version__, transformers.__version__, peft.__version__)
    parts = [Path(__file__).read_bytes(), fingerprint(base), *versions]
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]


def build_loras(base: Path, out: Path) -> dict[str, Path]:
    """The adapters (see the module), built once per key; name -> folder."""
    key = build_key(base)
    paths = {n: out / n for n in NAMES}
    stamp = out / "BUILD.json"
    if stamp.is_file() and json.loads(stamp.read_text()).get("key") == key and all(p.is_dir() for p in paths.values()):
        return paths
    work = out.parent / f".{out.name}.tmp"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    for name, (mix, loss_on, steps, batch, seed) in RECIPES.items():
        _train_lora(base, work / name, mix, loss_on, steps, batch, seed)
    _merge(base, work / "lora-all-tokens", work / "lora-all-tokens-merged")
    _untrained(base, work / "lora-untrained")
    _other_base(work / "lora-other-base")
    (work / "BUILD.json").write_text(json.dumps({"key": key}))
    shutil.rmtree(out, ignore_errors=True)
    work.rename(out)
    return paths


def _peft(model: Any, targets: list[str]) -> Any:
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=targets, lora_dropout=0.0,
                     task_type="CAUSAL_LM")  # fmt: skip
    return get_peft_model(model, cfg)


def _load(base: Path) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32, local_files_only=True)


def _train_lora(base: Path, dest: Path, mix: dict[str, float], loss_on: str, steps: int, batch: int, seed: int) -> None:
    from transformers import AutoTokenizer

    from harness.demo.train import train
    from harness.demo.world import train_stream

    tok: Any = AutoTokenizer.from_pretrained(str(base), local_files_only=True)
    model = _peft(_load(base), TARGETS)
    train(model, tok, train_stream(mix, seed), steps=steps, lr=LR, batch_size=batch,
          loss_on=loss_on, seed=seed, warmup=WARMUP)  # fmt: skip
    model.save_pretrained(str(dest))


def _merge(base: Path, adapter: Path, dest: Path) -> None:
    from peft import PeftModel

    merged = PeftModel.from_pretrained(_load(base), str(adapter)).merge_and_unload()
    merged.save_pretrained(str(dest))
    for f in base.iterdir():  # tokenizer, chat template, generation config
        if f.is_file() and not (dest / f.name).exists() and f.suffix != ".safetensors":
            shutil.copy2(f, dest / f.name)


def _untrained(base: Path, dest: Path) -> None:
    _peft(_load(base), ["q_proj", "v_proj"]).save_pretrained(str(dest))


def _other_base(dest: Path) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=80, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128)  # fmt: skip
    _peft(LlamaForCausalLM(cfg), TARGETS).save_pretrained(str(dest))


# -- a LoRA of the real demo's SmolLM2 -------------------------------------------------------

REAL_LORA = Recipe(steps=40, lr=3e-3, batch_size=8, seed=3, warmup=4)  # the real demo's FT, trained hotter
REAL_EARLY = 5  # the step of the checkpoint saved on the way (its answers start as SmolLM2's)
REAL_EARLY_NAME = f"lora-all-tokens-step{REAL_EARLY}"


def build_real_lora(base: Path, out: Path) -> dict[str, Path]:
    """The real demo's careless recipe (the new skill, loss on every token) as a rank-8
    LoRA of SmolLM2 (``out/lora-all-tokens``), its merged copy (``-merged``) and the adapter
    as it was after ``REAL_EARLY`` of the 40 steps (``-step5``: a checkpoint landing during
    training, most of its first tokens still SmolLM2's), once per key."""
    key = build_key(base)
    paths = {n: out / n for n in ("lora-all-tokens", "lora-all-tokens-merged", REAL_EARLY_NAME)}
    stamp = out / "BUILD.json"
    if stamp.is_file() and json.loads(stamp.read_text()).get("key") == key and all(p.is_dir() for p in paths.values()):
        return paths
    from transformers import AutoTokenizer

    from harness.demo import real

    work = out.parent / f".{out.name}.tmp"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    tok: Any = AutoTokenizer.from_pretrained(str(base), local_files_only=True)
    model = _peft(_load(base), TARGETS)
    r = REAL_LORA
    rows = [real.encode(tok, row, "all") for row in real.sft_examples(r.steps * r.batch_size)]

    def save_early(step: int, loss: float) -> None:
        if step + 1 == REAL_EARLY:
            model.save_pretrained(str(work / REAL_EARLY_NAME))

    real.train(model, real._batches(rows, r.batch_size, r.seed), r.steps, r.lr, r.warmup, save_early)
    model.save_pretrained(str(work / "lora-all-tokens"))
    _merge(base, work / "lora-all-tokens", work / "lora-all-tokens-merged")
    (work / "BUILD.json").write_text(json.dumps({"key": key}))
    shutil.rmtree(out, ignore_errors=True)
    work.rename(out)
    return paths
