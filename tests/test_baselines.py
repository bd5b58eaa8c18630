"""Baselines: a base evaluated once is reused by every comparison; a change invalidates it.

The scenario test runs real comparisons (the CLI, in this process, counting backend work
through ``RunResult``): base vs candidate 1, then base vs candidate 2 (zero base inference),
then the base with one weight rewritten in place (same size, mtime put back) and with an
edited chat template (each re-evaluated, the old runs listed as stale with the file that
changed), then ``regress baselines list|show|prune``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from harness import checkpoint as ckpt
from harness import pipeline
from harness.cli import main
from harness.store import RunStore
from tests.test_faults import write_suite

LIMIT = "3"


@pytest.fixture(autouse=True)
def _hash_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REGRESS_CACHE", str(tmp_path / "hash-cache"))


def _perturbed(base: Path, dest: Path, scale: float) -> Path:
    """A copy of ``base`` with one weight matrix scaled: a different model, same tokenizer."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(base, dest)
    sd = load_file(dest / "model.safetensors")
    name = sorted(k for k in sd if k.endswith("mlp.down_proj.weight"))[0]
    sd[name] = sd[name] * scale
    save_file(sd, dest / "model.safetensors", metadata={"format": "pt"})
    return dest


def _rewrite_weight_in_place(f: Path) -> None:
    """Change some bytes of a tensor without changing the file's size, then put its mtime back."""
    st = f.stat()
    with f.open("r+b") as fh:
        fh.seek(st.st_size - 64)
        data = bytearray(fh.read(64))
        fh.seek(st.st_size - 64)
        fh.write(bytes(b ^ 0x01 for b in data))
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert f.stat().st_size == st.st_size and f.stat().st_mtime_ns == st.st_mtime_ns


def test_base_is_reused_and_invalidated(tmp_path, base_ckpt, monkeypatch, capsys):
    monkeypatch.setattr(ckpt, "RACY_S", -1e9)  # cache even fresh files: the cache must not hide a change
    base = tmp_path / "base"
    shutil.copytree(base_ckpt, base)
    cand1 = _perturbed(base, tmp_path / "cand1", 1.02)
    cand2 = _perturbed(base, tmp_path / "cand2", 0.98)
    suite, store = write_suite(tmp_path), tmp_path / "store"
    results = []

    def evaluate(loaded, *a, **k):  # type: ignore[no-untyped-def]
        results.append((Path(loaded.path).name, real(loaded, *a, **k)))
        return results[-1][1]

    real = pipeline.evaluate
    monkeypatch.setattr(pipeline, "evaluate", evaluate)

    def compare(cand: Path) -> dict[str, object]:
        results.clear()
        argv = ["compare", "--base", str(base), "--model", str(cand), "--suite", str(suite), "--limit", LIMIT,
                "--store", str(store), "--out", str(tmp_path / f"report-{cand.name}")]  # fmt: skip
        assert main(argv) in (0, 1)
        return dict(results)

    first = compare(cand1)
    assert not first["base"].reused and first["base"].backend_requests > 0
    base_run = Path(first["base"].store_path)
    answers_before = (base_run / "answers.jsonl").read_bytes()

    second = compare(cand2)
    b = second["base"]
    assert b.reused and b.backend_calls == 0 and b.backend_requests == 0, "the base must not be run again"
    assert b.store_path == str(base_run) and b.records == first["base"].records
    assert (base_run / "answers.jsonl").read_bytes() == answers_before
    assert second["cand2"].backend_requests > 0

    # a weight file rewritten in place (same size, same mtime): a new baseline
    _rewrite_weight_in_place(base / "model.safetensors")
    third = compare(cand2)
    assert not third["base"].reused and third["base"].backend_requests > 0
    assert third["base"].checkpoint.fingerprint != b.checkpoint.fingerprint
    weights_run = Path(third["base"].store_path)

    # an edited chat template (same rendering): a new baseline
    with (base / "chat_template.jinja").open("a") as f:
        f.write("{# v2 #}")
    fourth = compare(cand2)
    assert not fourth["base"].reused and fourth["base"].backend_requests > 0
    current = Path(fourth["base"].store_path)
    assert len({base_run, weights_run, current}) == 3
    assert fourth["cand2"].reused and fourth["cand2"].backend_requests == 0
    capsys.readouterr()

    # regress baselines list | show | prune
    def cli(*args: str) -> str:
        assert main(["baselines", *args, "--store", str(store)]) == 0
        return capsys.readouterr().out

    # a run stored by an older regress (another record format or keyed settings): its key
    # is not the one its meta makes today
    old_run = store / "base-00000000deadbeef"
    shutil.copytree(current, old_run)
    old_meta = json.loads((old_run / "meta.json").read_text())
    (old_run / "meta.json").write_text(json.dumps({**old_meta, "key": "00000000deadbeef"}))

    listing = cli("list")
    rows = {line.split()[0]: line for line in listing.splitlines()[1:]}
    key = json.loads((base_run / "meta.json").read_text())["key"]
    assert len(rows) == 6, listing
    assert "stored by an older regress" in rows["00000000deadbeef"]
    assert "checkpoint changed (chat_template.jinja, model.safetensors)" in rows[key]
    assert "checkpoint changed (chat_template.jinja)" in rows[weights_run.name.rsplit("-", 1)[1]]
    assert rows[current.name.rsplit("-", 1)[1]].rstrip().endswith("-")
    assert all(" complete " in r for r in rows.values())

    shown = cli("show", key[:6])
    assert "demo_add" in shown and "demo_cmp" in shown and "model.safetensors" in shown

    partial = store / "partial-0123456789abcdef"
    with RunStore.open(partial, {"key": "0123456789abcdef", "checkpoint": str(base)}) as s:
        s.append("ll", [])
    assert "would remove" in cli("prune", "--stale", "--dry-run") and base_run.exists()
    out = cli("prune", "--stale")
    assert not base_run.exists() and not weights_run.exists() and not old_run.exists() and current.exists(), out
    with RunStore.open(current, {}):  # in use: never removed
        out = cli("prune", "--all")
        assert f"kept     {current.name}: in use by pid {os.getpid()}" in out
    assert current.exists() and not partial.exists() and not (store / first["cand1"].store_path).exists()
    assert main(["baselines", "show", "nosuchkey", "--store", str(store)]) == 2


# -- fingerprint ------------------------------------------------------------------------


def test_tree_hash_is_the_same_for_any_thread_count(tmp_path, monkeypatch):
    monkeypatch.setattr(ckpt, "BLOCK", 4096)
    f = tmp_path / "w.bin"
    f.write_bytes(os.urandom(3 * 4096 + 5))
    one = ckpt.hash_files([f], use_cache=False, threads=1)[f]
    assert ckpt.hash_files([f], use_cache=False, threads=4)[f] == one
    data = bytearray(f.read_bytes())
    data[-1] ^= 1
    f.write_bytes(bytes(data))
    assert ckpt.hash_files([f], use_cache=False, threads=4)[f] != one
    blocks = b"".join(hashlib.sha256(bytes(data[i : i + 4096])).digest() for i in range(0, len(data), 4096))
    assert (
        ckpt.hash_files([f], use_cache=False)[f]
        == hashlib.sha256(f"regress-tree-v1\0{len(data)}\0".encode() + blocks).hexdigest()
    )


def test_cache_skips_rereading_but_not_a_change(tmp_path, base_ckpt, monkeypatch):
    d = tmp_path / "ck"
    shutil.copytree(base_ckpt, d)
    fp = ckpt.fingerprint(d)
    cache_file = tmp_path / "hash-cache" / "file-hashes.json"
    assert not cache_file.exists() or str(d / "model.safetensors") not in cache_file.read_text(), (
        "a file written seconds ago must not be cached (racy: a change in the same tick would hide)"
    )
    monkeypatch.setattr(ckpt, "RACY_S", -1e9)
    assert ckpt.fingerprint(d) == fp
    assert str((d / "model.safetensors").resolve()) in json.loads(cache_file.read_text())

    def no_reads(*a):  # type: ignore[no-untyped-def]
        raise AssertionError("a cached file was read again")

    monkeypatch.setattr(ckpt, "_hash_block", no_reads)
    assert ckpt.fingerprint(d) == fp
    monkeypatch.undo()
    monkeypatch.setenv("REGRESS_CACHE", str(tmp_path / "hash-cache"))
    _rewrite_weight_in_place(d / "model.safetensors")
    assert ckpt.fingerprint(d) != fp


def test_trainer_states_are_not_weights(tmp_path, base_ckpt):
    d = tmp_path / "ck"
    shutil.copytree(base_ckpt, d)
    fp = ckpt.fingerprint(d)
    (d / "optimizer.pt").write_bytes(os.urandom(1000))
    (d / "training_args.bin").write_bytes(b"junk")
    assert ckpt.validate(d) and ckpt.fingerprint(d) == fp
    (d / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 3]}))
    assert ckpt.fingerprint(d) != fp


def test_each_backend_resolves_its_store_settings_and_noise_floor_rerun(monkeypatch):
    """Each engine module fills in its own defaults: these exact settings key every stored
    base (a change would orphan them all), and the noise floor reruns the base with another
    batch size only where regress forms the batches."""
    import torch

    from harness.backends import output_settings, rerun_options
    from harness.config import BackendOptions
    from harness.errors import BackendError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr("harness.backends.hf.memory_class", lambda device: 16 << 30)  # a 16-31 GiB machine
    default = BackendOptions()
    settings = {name: json.dumps(output_settings(name, default)) for name in ("hf", "vllm", "openai")}
    assert settings == {
        "hf": '{"accelerator": "cpu", "dtype": "float32", "batch_memory_mib": 1024, "chunk_size": 256}',
        "vllm": '{"accelerator": "cpu", "dtype": "float32", "max_model_len": null, "tensor_parallel_size": 1, '
        '"enforce_eager": true}',
        "openai": '{"api_model": null}',
    }
    assert output_settings("hf", BackendOptions(batch_size=100)) == {
        "accelerator": "cpu", "dtype": "float32", "batch_size": 100, "chunk_size": 400,
    }  # fmt: skip
    # batches sized by memory: the second run has a third of the budget (sizes: not a batch size)
    assert rerun_options("hf", default) == (BackendOptions(batch_memory_mib=341), None)
    assert rerun_options("hf", BackendOptions(batch_size=64)) == (BackendOptions(batch_size=17), (64, 17))
    small = BackendOptions(batch_size=2, chunk_size=100)
    assert rerun_options("hf", small) == (BackendOptions(batch_size=1, chunk_size=100), (2, 1))
    for name in ("vllm", "openai"):
        assert rerun_options(name, small) == (small, None)  # the engine batches as it schedules
    with pytest.raises(BackendError, match="unknown backend 'tgi'"):
        output_settings("tgi", default)


def test_settings_that_move_answers_are_in_the_key(monkeypatch):
    """A stored base is reused only under the same output settings and hardware, and not
    split by settings its backend ignores or by a default spelled out."""
    import sys
    import types

    import torch

    from harness.config import BackendOptions, RunConfig
    from harness.store import store_meta
    from harness.suites import load_suite

    suite = load_suite("demo")

    def meta(backend: str = "hf", **options: object) -> dict:
        cfg = RunConfig(suite=suite.path, backend=backend, options=BackendOptions(**options))  # type: ignore[arg-type]
        return store_meta("/m", "f" * 16, suite, cfg)

    def key(backend: str = "hf", **options: object) -> str:
        return meta(backend, **options)["key"]

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a CPU machine first
    hf, vllm, server = key(), key("vllm"), key("openai")
    assert len({hf, vllm, server}) == 3
    # hf: batch size, chunk size (which prompts are padded together) and dtype move answers;
    # vLLM's settings and defaults spelled out do not
    moved = [key(batch_size=8), key(chunk_size=8), key(dtype="bfloat16"), key(batch_size=64), key(batch_memory_mib=64)]
    assert len({hf, *moved}) == len(moved) + 1
    budget = meta()["settings"]["batch_memory_mib"]
    same_hf = [key(batch_memory_mib=budget), key(chunk_size=256), key(dtype="float32"), key(dtype="auto"),
               key(device="cpu"), key(device="cpu:0"), key(tensor_parallel_size=2), key(enforce_eager=False),
               key(max_model_len=512), key(concurrency=4)]  # fmt: skip
    assert set(same_hf) == {hf}
    # vllm: dtype, max length, tensor parallelism and eager mode (eager is its CPU default)
    moved = [key("vllm", dtype="bfloat16"), key("vllm", max_model_len=512), key("vllm", tensor_parallel_size=2),
             key("vllm", enforce_eager=False)]  # fmt: skip
    assert len({vllm, *moved}) == len(moved) + 1
    assert {key("vllm", enforce_eager=True), key("vllm", batch_size=8), key("vllm", device="cuda:1")} == {vllm}
    # a server: the model asked for, nothing of the local engine's
    assert {key("openai", dtype="bfloat16", batch_size=8, max_model_len=512)} == {server}
    assert key("openai", api_model="other") != server
    assert meta()["settings"]["accelerator"] == meta("vllm")["settings"]["accelerator"] == "cpu"
    assert meta(device="mps")["settings"]["accelerator"] == "mps"
    assert "accelerator" not in meta("openai")["settings"]

    # GPU machines: the card's name is keyed, not the index it is reached by
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    cards = {0: "NVIDIA H100 80GB HBM3", 1: "NVIDIA A100-SXM4-80GB", 2: "NVIDIA H100 80GB HBM3"}
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: cards[i])
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i=0: types.SimpleNamespace(total_memory=80 << 30))
    h100 = key()
    assert len({hf, h100, key(device="cuda:1")}) == 3  # CPU, one card, another card
    assert key(device="cuda:2") == key(device="cuda") == h100  # the same card under another index
    assert meta(device="cuda:1")["settings"]["accelerator"] == cards[1]
    assert key(device="cpu") == hf

    # vLLM: named through its platform (NVML), never torch.cuda, which would initialise
    # CUDA here and make vLLM spawn its workers; vLLM is not imported for real
    class Nvml:
        def get_device_name(self, i: int = 0) -> str:
            return cards[i]

    def initialises_cuda(i: int = 0) -> str:
        raise AssertionError("torch.cuda.get_device_name initialises CUDA")

    fake = types.ModuleType("vllm")
    fake.platforms = types.ModuleType("vllm.platforms")  # type: ignore[attr-defined]
    fake.platforms.current_platform = Nvml()  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "vllm", fake)
    monkeypatch.setitem(sys.modules, "vllm.platforms", fake.platforms)  # type: ignore[attr-defined]
    monkeypatch.setattr(torch.cuda, "get_device_name", initialises_cuda)
    on_gpu = meta("vllm")
    assert on_gpu["settings"]["accelerator"] == cards[0] and on_gpu["settings"]["dtype"] == "auto"
    assert key("vllm", device="cuda:1") == on_gpu["key"]  # vLLM picks its devices itself
