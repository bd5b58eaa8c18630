"""PEFT LoRA adapters as checkpoints: detection, validation, fingerprint, merge cache.

A folder with ``adapter_config.json`` and adapter weights and no ``config.json`` is an
adapter (what PEFT, TRL, Unsloth and axolotl save). It is applied to a full checkpoint
folder: ``--base`` for a candidate, else the adapter's ``base_model_name_or_path`` (a
folder or a hub id, ``harness.hub``). Before any engine starts, ``locate`` checks the
config's fields, the weights (the same header checks as a checkpoint's) and that the
adapter fits its base: every module it adapts must be in the base with the input and
output sizes of its LoRA matrices, and where the adapter's own base is at hand its
architecture, vocabulary and hidden size must be the base's. The fingerprint covers the
base's files and the adapter's, so a base's stored records are reused by every adapter
of it and a changed base or adapter is never paired with stale records.

``no_effect`` is the check that the adapter was applied at all: a candidate whose files
differ from the base's but whose every output, finish reason and log-likelihood equals
the base's almost certainly ran as the base (lm-eval #2432: a dropped LoRA request).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import struct
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from harness import checkpoint as ckpt
from harness import hub
from harness.errors import CheckpointError, RegressError
from harness.probes import same_drift
from harness.types import Adapter, Checkpoint, LoadedCheckpoint, RunResult

log = logging.getLogger(__name__)

CONFIG = "adapter_config.json"
WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
REQUIRED = ("peft_type", "r", "lora_alpha", "target_modules")
PREFIX = "base_model.model."  # PEFT's prefix of every adapter tensor name
SIZE_FIELDS = ("vocab_size", "hidden_size")


@dataclass(frozen=True)
class Source:
    """Where a checkpoint argument led: the folder (or adapter folder) to read, the
    folder its tokenizer comes from, the adapter if it is one, the hub id if it was one."""

    arg: str
    path: Path
    tokenizer_path: Path
    adapter: Adapter | None = None
    hub_ref: hub.HubRef | None = None
    base_hub: hub.HubRef | None = None


def is_adapter(path: Path) -> bool:
    return (path / CONFIG).is_file() and not (path / "config.json").is_file()


# -- locate: every check before anything is loaded ------------------------------------


def locate(arg: str, base: Source | None = None) -> Source:
    """The checkpoint named by ``arg`` (a folder, an adapter folder or a hub id), checked.

    An adapter is applied to ``base``'s model where a base is given, else to the model its
    config names."""
    ref = hub.resolve(arg)
    path = ref.path if ref is not None else Path(arg).expanduser()
    if path.is_dir() and is_adapter(path):
        return _locate_adapter(arg, path.resolve(), base, ref)
    p = ckpt.validate(path)
    return Source(arg, p, p, hub_ref=ref)


def _locate_adapter(arg: str, path: Path, base: Source | None, ref: hub.HubRef | None) -> Source:
    cfg = read_config(path)
    weights = _weights(path)
    if base is not None:
        model_dir, base_hub = Path(base.adapter.base if base.adapter else base.path), base.hub_ref or base.base_hub
    else:
        named = cfg.get("base_model_name_or_path")
        if not isinstance(named, str) or not named:
            raise CheckpointError(f"adapter {arg} names no base model (base_model_name_or_path): name one with --base")
        base_src = locate(named)
        if base_src.adapter is not None:
            raise CheckpointError(f"adapter {arg}: its base {named} is an adapter itself (stacked adapters)")
        model_dir, base_hub = base_src.path, base_src.hub_ref
    check_fits(arg, path, cfg, weights, model_dir)
    adapter = Adapter(
        str(path), str(model_dir), path.name, int(cfg["r"]), float(cfg["lora_alpha"]),
        _modules(cfg["target_modules"]), weights.name,
    )  # fmt: skip
    has_tok = any((path / t).is_file() for t in ckpt.TOKENIZER_FILES)
    return Source(arg, path, path if has_tok else model_dir, adapter, ref, base_hub)


def read_config(path: Path) -> dict[str, Any]:
    """``adapter_config.json``, with the fields regress needs checked (one line each)."""
    try:
        cfg = json.loads((path / CONFIG).read_text())
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"unreadable {CONFIG} in adapter {path}: {e}") from e
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{CONFIG} in adapter {path} is not a JSON object")
    missing = [k for k in REQUIRED if cfg.get(k) in (None, "", [])]
    if missing:
        raise CheckpointError(f"{CONFIG} in adapter {path} lacks {', '.join(missing)}")
    if cfg["peft_type"] != "LORA":
        raise CheckpointError(f"adapter {path} is a {cfg['peft_type']} adapter; regress runs LoRA adapters only")
    r, alpha = cfg["r"], cfg["lora_alpha"]
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise CheckpointError(f"{CONFIG} in adapter {path}: r must be a positive integer (got {r!r})")
    if isinstance(alpha, bool) or not isinstance(alpha, int | float):
        raise CheckpointError(f"{CONFIG} in adapter {path}: lora_alpha must be a number (got {alpha!r})")
    tm = cfg["target_modules"]
    if not (isinstance(tm, str) or (isinstance(tm, list) and all(isinstance(x, str) for x in tm))):
        raise CheckpointError(f"{CONFIG} in adapter {path}: target_modules must be a list of names or a regex")
    return cfg


def _modules(tm: str | list[str]) -> tuple[str, ...]:
    return (tm,) if isinstance(tm, str) else tuple(sorted(tm))


def _weights(path: Path) -> Path:
    for name in WEIGHTS:
        f = path / name
        if f.is_file():
            if f.suffix == ".safetensors":
                ckpt._check_safetensors(f)
            else:
                ckpt._check_bin(f)
            return f
    raise CheckpointError(f"no adapter weights ({' or '.join(WEIGHTS)}) in adapter {path}")


def tensor_shapes(f: Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape from a safetensors header (checked already); {} for a .bin."""
    if f.suffix != ".safetensors":
        return {}
    with f.open("rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(n))
    return {k: tuple(v["shape"]) for k, v in header.items() if k != "__metadata__"}


def check_fits(arg: str, path: Path, cfg: Mapping[str, Any], weights: Path, model_dir: Path) -> None:
    """One line, exit 2, where the adapter was trained on another base than ``model_dir``."""
    _check_named_base(arg, cfg, model_dir)
    shapes = tensor_shapes(weights)
    if weights.suffix == ".safetensors" and not any(".lora_A" in k for k in shapes):
        raise CheckpointError(f"adapter {arg} holds no LoRA weights (no lora_A tensor in {weights.name})")
    base_shapes: dict[str, tuple[int, ...]] = {}
    for w in ckpt.weight_files(model_dir):
        base_shapes.update(tensor_shapes(w))
    if not base_shapes:
        return  # a .bin base: the engine's own load is the check
    for name, shape in shapes.items():
        problem = _misfit(name, shape, base_shapes)
        if problem:
            raise CheckpointError(f"adapter {arg} does not fit base {model_dir}: {problem} (adapter of another base?)")


def _misfit(name: str, shape: tuple[int, ...], base: Mapping[str, tuple[int, ...]]) -> str | None:
    for part, dim in ((".lora_A.", 1), (".lora_B.", 0)):
        if part not in name:
            continue
        module = name.removeprefix(PREFIX).split(part)[0]
        target = base.get(f"{module}.weight")
        if target is None:
            return f"module {module} is not in the base"
        if len(target) != 2 or len(shape) != 2:
            return None  # embeddings and convolutions: left to the engine
        want = target[1] if dim == 1 else target[0]
        if shape[dim] != want:
            side = "input" if dim == 1 else "output"
            return f"{module}: LoRA {side} size {shape[dim]}, the base's is {want}"
    return None


def _check_named_base(arg: str, cfg: Mapping[str, Any], model_dir: Path) -> None:
    """Where the base the adapter names is at hand (a folder, a cached hub id) and is not
    ``model_dir``: its architecture, vocabulary and hidden size must be ``model_dir``'s."""
    named = cfg.get("base_model_name_or_path")
    if not isinstance(named, str) or not named:
        return
    try:
        src = hub.resolve(named, fetch=False)  # a config check never downloads a model
    except CheckpointError:
        return  # not at hand: the shapes decide
    folder = src.path if src is not None else Path(named).expanduser()
    theirs, ours = _model_config(folder), _model_config(model_dir)
    if not theirs or not ours or folder.resolve() == model_dir.resolve():
        return
    for key in ("architectures", "model_type", *SIZE_FIELDS):
        if key in theirs and key in ours and theirs[key] != ours[key]:
            raise CheckpointError(
                f"adapter {arg} was trained on {named} ({key} {theirs[key]}), not on base {model_dir} "
                f"({key} {ours[key]}): an adapter of another base"
            )


def _model_config(folder: Path) -> dict[str, Any]:
    try:
        data = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


# -- read: fingerprint and the loaded checkpoint ---------------------------------------


def read(src: Source, tokenizer: Any) -> LoadedCheckpoint:
    """The checkpoint loaded once per run; an adapter's fingerprint covers its base's files
    and its own, a hub id's its commit too."""
    if src.adapter is None:
        loaded = ckpt.read(src.path, tokenizer)
        return _named(loaded, src) if src.hub_ref is not None else loaded
    from harness.probes import eot_setup

    a = src.adapter
    files = adapter_files(src.path, a.weights, a.base)
    if src.base_hub is not None:
        files["@base_commit"] = src.base_hub.commit
    loaded = LoadedCheckpoint(
        str(src.path), ckpt.fingerprint_of(files), files, tokenizer, eot_setup(Path(a.base), tokenizer), a
    )
    return _named(loaded, src)


def adapter_files(path: Path, weights: str, base: str) -> dict[str, str]:
    """What an adapter's fingerprint is made of: its base's files ("base/...") and its own
    ("adapter/..."); "@base" names the base folder (a note, not content: the same adapter
    over the same content elsewhere is the same run)."""
    own = [path / CONFIG, path / weights]
    own += [path / n for n in ckpt.META_FILES if n != "config.json" and (path / n).is_file()]
    digests = ckpt.hash_files(own)
    files = {f"base/{k}": v for k, v in ckpt.fingerprint_files(base).items()}
    files.update({f"adapter/{f.name}": digests[f] for f in own})
    files["@base"] = str(base)
    return files


def current_files(path: Path, stored: Mapping[str, str]) -> dict[str, str]:
    """A stored run's checkpoint fingerprinted today (``regress baselines``): an adapter over
    the base folder its run recorded, any other folder as a checkpoint."""
    if is_adapter(path) and stored.get("@base"):
        weights = next((n for n in WEIGHTS if (path / n).is_file()), WEIGHTS[0])
        return adapter_files(path, weights, stored["@base"])
    return ckpt.fingerprint_files(path)


def _named(loaded: LoadedCheckpoint, src: Source) -> LoadedCheckpoint:
    """The report's name of it: the adapter's base, the hub id, revision and commit. The
    commit is a note in ``files`` ("@commit"); the fingerprint is the content's, so a hub
    snapshot and the same files in a folder share their stored records."""
    ref = src.hub_ref
    files = {**loaded.files, **({"@commit": ref.commit} if ref else {})}
    named = Checkpoint(
        loaded.path, loaded.fingerprint, loaded.adapter.base if loaded.adapter else None,
        ref.repo_id if ref else None, ref.revision if ref else None, ref.commit if ref else None,
    )  # fmt: skip
    return replace(loaded, files=files, named=named)


# -- merge: one folder per (base, adapter), for engines that cannot serve a LoRA --------


def merged_folder(ck: LoadedCheckpoint, root: Path) -> Path:
    """The adapter merged into its base (``merge_and_unload``) in a folder keyed by the
    adapter's fingerprint (which covers the base's), made once; later calls reuse it."""
    a = ck.adapter
    if a is None:
        raise RegressError(f"{ck.path} is not an adapter")
    dest = root / f"{a.name[:40]}-{ck.fingerprint}"
    if (dest / "config.json").is_file():
        return dest
    tmp = root / f".{dest.name}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    merge(a, tmp)
    os.replace(tmp, dest)
    return dest


def merge(a: Adapter, out: Path) -> None:
    """Write the adapter merged into its base as an ordinary checkpoint folder at ``out``."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(a.base, dtype=torch.float32, local_files_only=True)
    merged = PeftModel.from_pretrained(model, a.path).merge_and_unload()
    merged.save_pretrained(str(out))
    base = Path(a.base)
    for f in base.iterdir():  # tokenizer, chat template, generation config: the base's
        if f.is_file() and not (out / f.name).exists() and f.suffix not in (".safetensors", ".bin"):
            shutil.copy2(f, out / f.name)


# -- what the report says ------------------------------------------------------------

HOW = {
    "hf": "with peft over the loaded model, not merged",
    "vllm": "served by vLLM as a LoRA (each request with its LoRARequest), not merged",
    "openai": "by the server, under the adapter's name",
}


def notes(base: Checkpoint, cand: Checkpoint, backend: str) -> tuple[str, ...]:
    """The report's lines on adapters and hub ids: what was applied to what, and how."""
    out = []
    for label, c in (("base", base), ("candidate", cand)):
        if c.adapter_of:
            out.append(f"{label} {c.path} is a PEFT adapter of {c.adapter_of}, applied {HOW.get(backend, '')}")
        if c.hub_id:
            out.append(f"{label} is hub model {c.hub_id}, revision {c.revision} (commit {c.commit})")
    return tuple(out)


# -- did the adapter do anything? --------------------------------------------------------


def no_effect(base: RunResult, cand: RunResult) -> bool:
    """True where the candidate's files differ from the base's but every output, finish
    reason, generated token and probe answer equals the base's, and every drift value too
    (to ``probes.DRIFT_NOISE``: with drafting it is another batch's computation)."""
    if base.checkpoint.fingerprint == cand.checkpoint.fingerprint or not base.records:
        return False
    b = {(r.task, r.item_id): (r.output, r.finish, r.token_ids) for r in base.records}
    c = {(r.task, r.item_id): (r.output, r.finish, r.token_ids) for r in cand.records}
    same_probes = [(g.text, g.finish) for g in base.termination] == [(g.text, g.finish) for g in cand.termination]
    return b == c and same_drift(base.drift, cand.drift) and same_probes  # drift to float noise


def check_effect(base: RunResult, cand: RunResult, allow: bool) -> None:
    """``RegressError`` (exit 2) where the candidate changed nothing (``no_effect``)."""
    if not no_effect(base, cand):
        return
    what = f"{cand.checkpoint.path}'s files differ from {base.checkpoint.path}'s"
    msg = (
        f"{what}, but every output, finish reason and log-likelihood equals the base's: the adapter (or "
        "fine-tune) was almost certainly not applied; --allow-no-effect accepts it"
    )
    if not allow:
        raise RegressError(msg)
    log.warning("regress: warning: %s", msg.replace("; --allow-no-effect accepts it", " (allowed)"))
