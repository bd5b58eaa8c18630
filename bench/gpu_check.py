"""GPU check: regress's inference path against a bare ``model.generate`` loop, on one GPU.

Run through ``bench/gpu_check.sh`` (which provides lm-eval from ``bench/wheels`` where the
machine lacks it). Builds a random-initialised Llama of ~1B parameters on the GPU (the
demo's character tokenizer and chat template), saves it as a checkpoint, and generates
greedily for ``--prompts`` chat prompts to ``--max-tokens`` tokens:

* regress: ``RegressLM.generate`` (the store-backed, chunked path lm-eval drives in
  ``regress run``) over the ``hf`` backend, and over ``vllm`` where it imports;
* bare: a plain loop of ``model.generate`` over batches of the same prompts.

Prints tokens/s of each and regress's ratio (time regress / time bare; <= 1 is as fast
as the bare loop). ``--cpu`` is the small mode the test suite runs so this cannot rot.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch


def build_checkpoint(out: Path, cpu: bool) -> tuple[Any, int]:
    """A random Llama (~1.0B parameters on GPU, ~0.1M in CPU mode) saved at ``out``."""
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    from harness.demo.tokenizer import build_tokenizer

    tok = build_tokenizer()
    if cpu:
        shape = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2}
    else:  # Llama-3.2-1B's body: 16 layers of width 2048, GQA 32/8, MLP 8192
        shape = {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32}
    cfg = LlamaConfig(
        vocab_size=len(tok),
        num_key_value_heads=max(1, shape["num_attention_heads"] // 4),
        max_position_embeddings=1024,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
        **shape,
    )
    torch.manual_seed(0)
    device = "cpu" if cpu else "cuda"
    with torch.device(device):
        model = LlamaForCausalLM(cfg)
    model = model.to(torch.float32 if cpu else torch.bfloat16).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id
    )
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return tok, sum(p.numel() for p in model.parameters())


def prompts(tok: Any, n: int) -> list[str]:
    rng = random.Random(0)
    words = ["what is", "reverse", "sort", "count the", "which is larger:", "explain", "list"]
    out = []
    for _ in range(n):
        body = f"{rng.choice(words)} " + " ".join(str(rng.randrange(10 ** rng.randrange(1, 6))) for _ in range(8))
        chat = [{"role": "user", "content": body}]
        out.append(tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True))
    return out


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def bare_loop(model: Any, tok: Any, texts: list[str], max_tokens: int, batch: int) -> tuple[float, int]:
    """What one writes by hand: batches in the given order, left padding, greedy."""
    tokens = 0
    sync()
    t = time.perf_counter()
    with torch.inference_mode():
        for s in range(0, len(texts), batch):
            enc = tok(texts[s : s + batch], return_tensors="pt", padding=True, add_special_tokens=False)
            enc = enc.to(model.device)
            out = model.generate(
                **enc,
                max_new_tokens=max_tokens,
                do_sample=False,
                eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id,
            )
            new = out[:, enc["input_ids"].shape[1] :]
            tokens += int((new != tok.pad_token_id).sum())
            tok.batch_decode(new, skip_special_tokens=True)
    sync()
    return time.perf_counter() - t, tokens


def regress_path(backend: Any, texts: list[str], max_tokens: int, store_dir: Path) -> tuple[float, int]:
    """``RegressLM.generate`` with the engine already started: chunking, the store's
    fsynced appends, finish reasons and token ids included."""
    from harness.lm_adapter import RegressLM
    from harness.store import RunStore
    from harness.types import GenRequest

    reqs = [GenRequest(p, (), max_tokens) for p in texts]
    with RunStore.open(store_dir, {"bench": "gpu_check"}) as store:
        lm = RegressLM(lambda: backend, store, lambda m, g: "", "gpu-check")
        sync()
        t = time.perf_counter()
        gens = lm.generate(reqs)
        sync()
        dt = time.perf_counter() - t
    assert len(gens) == len(reqs)
    return dt, sum(g.n_tokens for g in gens)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu", action="store_true", help="small mode on CPU (what the test suite runs)")
    ap.add_argument("--prompts", type=int, default=None, help="default 2000 (GPU) / 48 (CPU)")
    ap.add_argument("--max-tokens", type=int, default=None, help="default 64 (GPU) / 8 (CPU)")
    ap.add_argument("--batch-size", type=int, default=None, help="default 128 (GPU) / 16 (CPU)")
    ap.add_argument("--no-vllm", action="store_true")
    ap.add_argument("--json", default=None, help="also write the results here")
    a = ap.parse_args()
    cpu = a.cpu
    if not cpu and not torch.cuda.is_available():
        print("gpu_check: no CUDA device; run with --cpu for the small CPU mode", file=sys.stderr)
        return 2
    n = a.prompts or (48 if cpu else 2000)
    max_tokens = a.max_tokens or (8 if cpu else 64)
    batch = a.batch_size or (16 if cpu else 128)
    device = "cpu" if cpu else torch.cuda.get_device_name(0)
    t0 = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="regress-gpu-check-"))
    rows: list[dict[str, Any]] = []

    def add(row: dict[str, Any]) -> None:  # printed as soon as measured: a timeout keeps what ran
        rows.append(row)
        ratio = f"{row['ratio']:.3f}" if "ratio" in row else "1"
        tps = row["tokens"] / row["s"]
        print(f"{row['path']:28s} {row['s']:8.2f} {row['tokens']:9d} {tps:10.1f} {ratio:>12s}", flush=True)

    try:
        from harness import checkpoint
        from harness.backends.hf import HFBackend
        from harness.config import BackendOptions

        ckpt = work / "llama-random"
        tok, n_params = build_checkpoint(ckpt, cpu)
        texts = prompts(tok, n)
        print(f"device {device}; random Llama, {n_params / 1e6:,.1f}M parameters; {n} prompts x {max_tokens} tokens")
        print(f"{'path':28s} {'seconds':>8s} {'tokens':>9s} {'tokens/s':>10s} {'time / bare':>12s}", flush=True)
        loaded = checkpoint.load(ckpt)  # tokenizer and end-of-turn ids, as a run reads them
        hf = HFBackend(loaded, BackendOptions(batch_size=batch, device="cpu" if cpu else "cuda"))
        bare_loop(hf.model, tok, texts[:batch], 2, batch)  # warm-up (kernels, allocator)
        bare_t, bare_tok = bare_loop(hf.model, tok, texts, max_tokens, batch)
        add({"path": "bare model.generate loop", "s": bare_t, "tokens": bare_tok})
        reg_t, reg_tok = regress_path(hf, texts, max_tokens, work / "store-hf")
        add({"path": "regress hf", "s": reg_t, "tokens": reg_tok, "ratio": reg_t / bare_t})
        hf.close()
        del hf
        if not cpu:
            torch.cuda.empty_cache()
        if not a.no_vllm and not cpu:
            from harness.backends import vllm as vllm_backend

            try:
                vllm_backend.import_engine()
            except ImportError as e:
                print(f"vllm: not importable ({e.name or e}); skipped")
            else:
                vb = vllm_backend.VLLMBackend(loaded, BackendOptions(gpu_memory_utilization=0.5, dtype="bfloat16"))
                v_t, v_tok = regress_path(vb, texts, max_tokens, work / "store-vllm")
                add({"path": "regress vllm", "s": v_t, "tokens": v_tok, "ratio": v_t / bare_t})
                vb.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    total = time.perf_counter() - t0
    print(f"total {total:.0f} s on {device} ({platform.node()}, torch {torch.__version__})")
    if a.json:
        Path(a.json).write_text(json.dumps({"device": device, "prompts": n, "max_tokens": max_tokens, "rows": rows}))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
