"""The seed's claim where it has room: SmolLM2 fine-tuned on answers it mostly writes already.

On the real demo's Veltan data the base knows no answer token (90.7% of them are key), so
key-token training cannot differ from answer-only training. This set gives the mask room.
Each example asks two things: a Veltan translation (new facts, 1-3 words) and a grade-school
word problem from gsm8k's *train* split (never evaluated: suite ``real`` reads its test
split). Its answer is the translation, a blank line, then the base's own greedy answer to the
rest, generated after that prefix by the base itself with vLLM (``own_examples``: examples whose
answer did not end within ``MAX_TOKENS`` are left out). So the base writes every answer token
after the translation: ``regress tokens`` finds the translation's tokens key and few others.

Four fine-tunes of the base (``build_own``, into ``DIR/real-own``), on the same 320
examples with ``real.FT``'s steps, batch size and seed:

* ``own-answer-only``: loss on the whole answer and its end-of-turn token (lr 1e-4);
* ``own-all-tokens``: loss on every token, prompt included (lr 5e-4, as ``real``'s careless one);
* ``own-key-tokens``: loss on the key tokens alone (``sft.masked_rows``; lr 1e-4);
* ``own-lora``: a rank-8 LoRA with the answer-only loss (lr 3e-3), saved as an adapter.

``docs/minimal-modification.md`` has the comparison and what it says. Training all four took
33 minutes on 2 cores (7 to 10 each), generating the answers about 20 more::

    python -m harness.demo.real_own --out .cache/demo/real
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from harness.demo import real
from harness.demo.derived import Recipe
from harness.types import Messages

NAMES = ("own-answer-only", "own-all-tokens", "own-key-tokens", "own-lora")
N, MAX_TOKENS, SEED = 320, 256, 21
LR = {"own-answer-only": 1e-4, "own-all-tokens": 5e-4, "own-key-tokens": 1e-4, "own-lora": 3e-3}
GSM8K_TRAIN = "openai__gsm8k/main/train.jsonl"


def _recipe(name: str) -> Recipe:
    f = real.FT
    return Recipe(steps=f.steps, lr=LR[name], batch_size=f.batch_size, seed=f.seed, warmup=f.warmup)


def _questions(data: Path, n: int) -> list[str]:
    path = data / GSM8K_TRAIN
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: real_own reads gsm8k's train split from the shared benchmarks")
    with path.open(encoding="utf-8") as fh:
        rows = [json.loads(line)["question"] for line, _ in zip(fh, range(n))]
    return rows


def own_examples(base: Path, data: Path, n: int = N) -> tuple[list[dict[str, Messages]], dict[str, int]]:
    """``n`` chat rows: a translation, then the base's greedy answer to a gsm8k train problem
    written after that translation; and counts (asked, kept, dropped for running to the cap)."""
    from harness.backends import BackendOptions, load_backend
    from harness.checkpoint import load
    from harness.types import GenRequest

    rng = random.Random(SEED)
    ck = load(base)
    tok: Any = ck.tokenizer
    asks = []
    for q in _questions(data, 3 * n):
        words = rng.sample(sorted(real.VELTAN), rng.randint(1, 3))
        user = f"Translate into Veltan: {', '.join(words)}. Then solve: {q}"
        prefix = f"{', '.join(real.VELTAN[w] for w in words)}\n\n"
        prompt = tok.apply_chat_template(
            [{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True
        )
        asks.append((user, prefix, GenRequest(prompt + prefix, (), MAX_TOKENS)))
    backend = load_backend("vllm", ck, BackendOptions())  # greedy tokens as hf's (tests), several times faster
    try:
        gens = backend.generate([r for _, _, r in asks])
    finally:
        backend.close()
    rows: list[dict[str, Messages]] = []
    for (user, prefix, _), g in zip(asks, gens):
        if g.finish == "eos" and g.text.strip() and len(rows) < n:
            answer = prefix + g.text
            rows.append({"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]})
    counts = {"asked": len(asks), "kept": len(rows), "ran_to_cap": sum(g.finish == "length" for g in gens)}
    if len(rows) < n:
        raise RuntimeError(f"only {len(rows)} of {len(asks)} own answers ended within {MAX_TOKENS} tokens; {n} needed")
    return rows, counts


def _key(base: Path, *parts: object) -> str:
    from harness.checkpoint import fingerprint

    return hashlib.sha256(repr((fingerprint(base), *parts)).encode()).hexdigest()[:16]


def own_data(real_dir: Path, data: Path) -> tuple[list[dict[str, Messages]], dict[str, int]]:
    """``own_examples`` of ``real_dir/base``, cached in ``real_dir/real-own.sft.jsonl`` (with
    its key and counts beside it) apart from the fine-tunes: generating them is the long part."""
    base = real_dir / "base"
    path, stamp = real_dir / "real-own.sft.jsonl", real_dir / "real-own.sft.json"
    key = _key(base, N, MAX_TOKENS, SEED, real.VELTAN, inspect.getsource(own_examples), inspect.getsource(_questions))
    meta = json.loads(stamp.read_text()) if stamp.is_file() else {}
    if meta.get("key") == key and path.is_file():
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()], meta["counts"]
    rows, counts = own_examples(base, data)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    tmp.rename(path)
    stamp.write_text(json.dumps({"key": key, "counts": counts}))
    return rows, counts


def build_own(real_dir: Path, data: Path) -> dict[str, Path]:
    """Build (or reuse) ``real_dir/real-own``: the data (``sft.jsonl``) and the four
    fine-tunes of ``real_dir/base``; return their folders."""
    base = real_dir / "base"
    out = real_dir / "real-own"
    paths = {name: out / name for name in NAMES}
    here = Path(__file__).parent
    key = _key(base, *(p.read_bytes() for p in (Path(__file__), here / "real.py", here / "steps.py", here / "lora.py")))
    stamp = out / "BUILD.json"
    if stamp.is_file() and json.loads(stamp.read_text()).get("key") == key and all(p.is_dir() for p in paths.values()):
        return paths
    work = real_dir / ".real-own.building"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    t0 = time.perf_counter()
    rows, counts = own_data(real_dir, data)
    (work / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    seconds = {"data": round(time.perf_counter() - t0, 1)}
    for name in NAMES:
        t0 = time.perf_counter()
        print(f"building real-own/{name}", file=sys.stderr)
        _fine_tune(base, name, rows, work / name)
        seconds[name] = round(time.perf_counter() - t0, 1)
    (work / "BUILD.json").write_text(json.dumps({"key": key, "data": counts, "seconds": seconds}, indent=2))
    shutil.rmtree(out, ignore_errors=True)
    work.rename(out)
    return paths


def _fine_tune(base: Path, name: str, data: list[dict[str, Messages]], dest: Path) -> None:
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    from harness.demo import lora

    r = _recipe(name)
    torch.manual_seed(r.seed)
    tok = AutoTokenizer.from_pretrained(str(base))
    model: Any = LlamaForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    if name == "own-key-tokens":
        rows = real.key_token_rows(base, data)
    else:
        rows = [real.encode(tok, row, "all" if name == "own-all-tokens" else "answer") for row in data]
    if name == "own-lora":
        model = lora._peft(model, lora.TARGETS)
    real.train(model, real._batches(rows, r.batch_size, r.seed), r.steps, r.lr, r.warmup)
    if name == "own-lora":
        model.save_pretrained(str(dest))
    else:
        real._save(model, tok, dest)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=".cache/demo/real", help="the real demo's folder (its base is built first)")
    ap.add_argument("--data", default=None, help="the shared benchmarks (default: as suites resolve them)")
    a = ap.parse_args()
    from harness.suites import data_root

    suites = Path(__file__).resolve().parents[2] / "suites"
    root = data_root(a.data, "../../shared/benchmarks", suites)  # as suite real names it
    if root is None:
        raise SystemExit("real_own: no benchmark data found; give --data DIR")
    real.build_real(Path(a.out), fine_tunes=())
    print(json.dumps({k: str(v) for k, v in build_own(Path(a.out), root).items()}))
