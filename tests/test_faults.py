"""Integrity under faults, and the bad-input list of issue 7.

Every bad input ends in one line naming the problem, exit 2, and nothing written: no
report folder and no store folder (everything is checked before either is made). Faults:
a store locked by another process (named in the message), a full disk (a real 12 KiB
tmpfs where this process may mount one, and an error injected at the write layer),
a torn last line, an interrupted atomic write.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from harness import store as store_mod
from harness.cli import main
from harness.errors import StoreError
from harness.store import RunStore, atomic_write
from harness.types import Generation
from tests.conftest import REPO

LIMIT = "3"


@pytest.fixture(autouse=True)
def _hash_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REGRESS_CACHE", str(tmp_path / "hash-cache"))


def write_suite(d: Path, tasks: tuple[str, ...] = ("demo_add", "demo_cmp"), task_dir: Path | None = None) -> Path:
    f = d / "suite.yaml"
    f.write_text(
        f"name: tiny\nversion: 1\ntask_dirs: [{task_dir or REPO / 'suites' / 'demo'}]\n"
        f"chat_template: true\ntasks: [{', '.join(tasks)}]\n"
    )
    return f


def variant(base: Path, tmp: Path, name: str) -> Path:
    d = tmp / name
    shutil.copytree(base, d)
    return d


def compare(tmp: Path, base: Path, model: Path, *extra: str, suite: Path | None = None) -> list[str]:
    args = ["compare", "--base", str(base), "--model", str(model), "--limit", LIMIT]
    args += ["--suite", str(suite or write_suite(tmp)), "--store", str(tmp / "store"), "--out", str(tmp / "report")]
    return args + list(extra)


def bad(capsys: pytest.CaptureFixture[str], tmp: Path, argv: list[str], *expect: str) -> str:
    """Run the CLI; check exit 2, one stderr line with every ``expect``, nothing written."""
    assert main(argv) == 2
    lines = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    assert len(lines) == 1, lines
    line = lines[0]
    assert line.startswith("regress: error: "), line
    for e in expect:
        assert e in line, (e, line)
    written = [p.name for p in (tmp / "report", tmp / "store") if p.exists()]
    assert not written, f"bad input wrote {written}"
    assert not list(tmp.glob(".regress-probe-*"))
    return line


# -- the bad-input list ---------------------------------------------------------------


def _corrupt(d: Path) -> None:
    (d / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!" + b"\0" * 64)


def _truncate(d: Path) -> None:
    f = d / "model.safetensors"
    os.truncate(f, f.stat().st_size - 1000)


def _bad_tensor_size(d: Path) -> None:
    """A header whose tensor sizes disagree with their shapes (same file size)."""
    f = d / "model.safetensors"
    data = bytearray(f.read_bytes())
    hlen = int.from_bytes(data[:8], "little")
    header = data[8 : 8 + hlen].decode()
    i = header.index('"shape":[') + len('"shape":[')
    digit = header[i]
    header = header[:i] + ("2" if digit != "2" else "3") + header[i + 1 :]
    data[8 : 8 + hlen] = header.encode()
    f.write_bytes(bytes(data))


def _no_tokenizer(d: Path) -> None:
    (d / "tokenizer.json").unlink()


def _broken_tokenizer(d: Path) -> None:
    (d / "tokenizer.json").write_text('{"version": "1.0", "model": {"type": "BPE", "vocab": ')


def _no_chat_template(d: Path) -> None:
    (d / "chat_template.jinja").unlink()
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))


def _missing_shard(d: Path) -> None:
    f = d / "model.safetensors"
    f.rename(d / "model-00001-of-00002.safetensors")
    shards = {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}
    index = {"metadata": {}, "weight_map": shards}
    (d / "model.safetensors.index.json").write_text(json.dumps(index))


def _other_vocab(d: Path) -> None:
    tok = json.loads((d / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    a, b = [k for k in vocab if not k.startswith("<")][:2]
    vocab[a], vocab[b] = vocab[b], vocab[a]
    (d / "tokenizer.json").write_text(json.dumps(tok))


CANDIDATE_CASES = {
    "corrupt-weights": (_corrupt, ["corrupt weight file", "model.safetensors"]),
    "truncated-weights": (_truncate, ["truncated weight file", "model.safetensors"]),
    "tensor-size-mismatch": (_bad_tensor_size, ["corrupt weight file", "shape needs"]),
    "missing-shard": (_missing_shard, ["incomplete", "model-00002-of-00002.safetensors", "missing"]),
    "no-tokenizer": (_no_tokenizer, ["no tokenizer in checkpoint"]),
    "broken-tokenizer": (_broken_tokenizer, ["cannot load tokenizer"]),
    "no-chat-template": (_no_chat_template, ["has no chat template", "suite 'tiny' needs"]),
    "other-vocabulary": (_other_vocab, ["different vocabularies", "2 with other ids"]),
}


@pytest.mark.parametrize("case", list(CANDIDATE_CASES))
def test_bad_candidate_checkpoint(case, capsys, tmp_path, base_ckpt):
    make, expect = CANDIDATE_CASES[case]
    cand = variant(base_ckpt, tmp_path, "cand")
    make(cand)
    bad(capsys, tmp_path, compare(tmp_path, base_ckpt, cand), *expect)


def test_missing_path_and_folder_without_config(capsys, tmp_path, base_ckpt):
    bad(capsys, tmp_path, compare(tmp_path, base_ckpt, tmp_path / "nope"), "checkpoint not found", "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    bad(capsys, tmp_path, compare(tmp_path, empty, base_ckpt), "no config.json", "empty")


def test_unknown_backend(capsys, tmp_path, base_ckpt):
    bad(capsys, tmp_path, compare(tmp_path, base_ckpt, base_ckpt, "--backend", "nosuch"), "unknown backend 'nosuch'")


def test_unwritable_output_and_store(capsys, tmp_path, base_ckpt):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    argv = compare(tmp_path, base_ckpt, base_ckpt)
    argv[argv.index("--out") + 1] = str(blocker / "report")
    bad(capsys, tmp_path, argv, "output folder", "not writable")
    argv = compare(tmp_path, base_ckpt, base_ckpt)
    argv[argv.index("--store") + 1] = str(blocker / "store")
    bad(capsys, tmp_path, argv, "record store", "not writable")


def _task(tmp: Path, rows: list[str], name: str = "t_x") -> Path:
    d = tmp / "tasks"
    d.mkdir(exist_ok=True)
    (d / f"{name}.jsonl").write_text("".join(r + "\n" for r in rows))
    (d / f"{name}.yaml").write_text(
        f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {name}.jsonl\n"
        'test_split: test\noutput_type: generate_until\ndoc_to_text: "{{question}}"\ndoc_to_target: "{{answer}}"\n'
    )
    return d


def test_bad_suites(capsys, tmp_path, base_ckpt):
    """Malformed YAML (file and line), an empty task, duplicate item ids, a !function."""
    s = tmp_path / "broken.yaml"
    s.write_text("name: s\ntasks:\n  - demo_add\n  - [unclosed\nversion: 1\n")
    line = bad(capsys, tmp_path, compare(tmp_path, base_ckpt, base_ckpt, suite=s), "malformed YAML", "broken.yaml:")
    assert "broken.yaml:5" in line or "broken.yaml:4" in line, line

    d = _task(tmp_path, [], "t_empty")
    suite = write_suite(tmp_path, ("t_empty",), d)
    bad(capsys, tmp_path, compare(tmp_path, base_ckpt, base_ckpt, suite=suite), "task t_empty is empty")

    rows = ['{"id": "a", "question": "q1", "answer": "1"}', '{"id": "b", "question": "q2", "answer": "2"}',
            '{"id": "a", "question": "q3", "answer": "3"}']  # fmt: skip
    d = _task(tmp_path, rows, "t_dup")
    suite = write_suite(tmp_path, ("t_dup",), d)
    argv = compare(tmp_path, base_ckpt, base_ckpt, suite=suite)
    bad(capsys, tmp_path, argv, "t_dup.jsonl:3", "duplicate item id 'a'")

    yml = d / "t_dup.yaml"
    yml.write_text(yml.read_text() + "process_results: !function utils.process\n")
    bad(capsys, tmp_path, compare(tmp_path, base_ckpt, base_ckpt, suite=suite), "'!function' is not allowed")


def test_same_vocab_other_tokenizer_files_is_a_warning(tmp_path, base_ckpt, caplog):
    from harness.config import RunConfig
    from harness.pipeline import preflight
    from harness.suites import load_suite

    cand = variant(base_ckpt, tmp_path, "cand")
    tok = json.loads((cand / "tokenizer.json").read_text())
    tok["truncation"] = {"direction": "Right", "max_length": 400, "strategy": "LongestFirst", "stride": 0}
    (cand / "tokenizer.json").write_text(json.dumps(tok, indent=1))
    cfg = RunConfig(suite=str(write_suite(tmp_path)), store_dir=str(tmp_path / "store"))
    with caplog.at_level(logging.WARNING):
        loaded = preflight([str(base_ckpt), str(cand)], load_suite(cfg.suite), cfg, tmp_path / "report")
    assert [Path(ck.path) for ck in loaded] == [base_ckpt.resolve(), cand.resolve()]
    assert loaded[0].fingerprint != loaded[1].fingerprint  # the tokenizer files are part of the fingerprint
    assert any("tokenizer files differ" in r.getMessage() and "vocabularies match" in r.getMessage()
               for r in caplog.records)  # fmt: skip
    assert not (tmp_path / "store").exists()


# -- the lock ---------------------------------------------------------------------------


def test_second_run_on_a_locked_store_names_the_holder(capsys, tmp_path, base_ckpt):
    from harness import checkpoint as ckpt
    from harness.config import RunConfig
    from harness.store import store_folder, store_meta
    from harness.suites import load_suite

    suite_file = write_suite(tmp_path)
    cfg = RunConfig(suite=str(suite_file), store_dir=str(tmp_path / "store"), limit=int(LIMIT))
    p = base_ckpt.resolve()
    files = ckpt.fingerprint_files(p)
    meta = store_meta(str(p), ckpt.fingerprint_of(files), load_suite(str(suite_file)), cfg, files)
    folder = store_folder(cfg.store_dir, meta)
    with RunStore.open(folder, meta):
        argv = ["run", "--model", str(base_ckpt), "--suite", str(suite_file), "--limit", LIMIT,
                "--store", str(tmp_path / "store")]  # fmt: skip
        assert main(argv) == 2
        err = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
        assert len(err) == 1 and err[0].startswith("regress: error: ")
        assert f"is in use by pid {os.getpid()} on " in err[0], err[0]
        assert not (folder / "answers.jsonl").exists()
    with pytest.raises(StoreError, match="in use"):  # a lock held by a live process elsewhere, too
        holder = subprocess.Popen(
            ["python3", "-c", "import fcntl,os,sys,time; fd=os.open(sys.argv[1], os.O_RDWR); "
             "fcntl.flock(fd, fcntl.LOCK_EX); os.pwrite(fd, b'pid 1 on elsewhere', 0); print('ok', flush=True); "
             "time.sleep(30)", str(folder / "lock")], stdout=subprocess.PIPE, text=True)  # fmt: skip
        try:
            assert holder.stdout is not None and holder.stdout.readline().strip() == "ok"
            RunStore.open(folder, meta)
        finally:
            holder.kill()
            holder.wait()


# -- full disk --------------------------------------------------------------------------


@pytest.fixture
def tiny_disk(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A real 12 KiB tmpfs (3 pages: meta.json, lock, a few answers) (skipped where this process may not mount one)."""
    mnt = tmp_path / "tiny-disk"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12k", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_out_of_disk_space_mid_run_then_resume(capsys, tmp_path, base_ckpt, tiny_disk):
    suite = write_suite(tmp_path)
    argv = ["compare", "--base", str(base_ckpt), "--model", str(base_ckpt), "--suite", str(suite), "--limit", "6",
            "--chunk-size", "2", "--store", str(tiny_disk / "store"), "--out", str(tmp_path / "report")]  # fmt: skip
    assert main(argv) == 2
    err = [x for x in capsys.readouterr().err.splitlines() if x.startswith("regress:")]
    assert len(err) == 1 and "out of disk space while writing" in err[0], err
    assert not (tmp_path / "report").exists()
    (run,) = (tiny_disk / "store").iterdir()
    assert not (run / "records.jsonl").exists(), "records may only be written complete"
    kept = (run / "answers.jsonl").read_bytes()
    assert kept, "the answers that fit were kept"
    subprocess.run(["mount", "-o", "remount,size=8m", str(tiny_disk)], check=True)  # space freed
    assert main(argv) in (0, 1)
    lines = (run / "answers.jsonl").read_bytes().splitlines()
    keys = [json.loads(x)["k"] for x in lines]
    assert len(keys) == len(set(keys)), "an answer was computed twice"
    assert (tmp_path / "report" / "summary.json").is_file()


class _FullDisk:
    """``os`` for harness.store whose ``write`` fills the disk after ``budget`` bytes."""

    def __init__(self, budget: int) -> None:
        self.budget = budget

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        return getattr(os, name)

    def write(self, fd: int, data) -> int:  # type: ignore[no-untyped-def]
        if self.budget <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        n = os.write(fd, bytes(data[: self.budget]))
        self.budget -= n
        return n

    def fsync(self, fd: int) -> None:  # a full disk also shows at fsync (delayed allocation)
        if self.budget <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        os.fsync(fd)


def _gen(i: int) -> Generation:
    return Generation(f"answer {i}", 3, "eos", "<|end|>", (1, 2, 3))


def test_enospc_at_the_write_layer_leaves_a_resumable_store(tmp_path, monkeypatch):
    with RunStore.open(tmp_path / "run", {"key": "k"}) as s:
        s.append("gen", [(f"k{i}", _gen(i)) for i in range(4)])
        size = (tmp_path / "run" / "answers.jsonl").stat().st_size
        monkeypatch.setattr(store_mod, "os", _FullDisk(budget=size // 2 + 7))  # the disk fills mid-line
        with pytest.raises(StoreError, match="out of disk space while writing .*answers.jsonl"):
            s.append("gen", [(f"k{i}", _gen(i)) for i in range(4, 8)])
        assert "k5" not in s.answers("gen"), "an answer not on disk must not count as done"
        monkeypatch.undo()
    with RunStore.open(tmp_path / "run", {"key": "k"}) as s:
        kept = sorted(s.answers("gen"))  # the lines that reached the disk whole, and only those
        assert kept[:4] == [f"k{i}" for i in range(4)] and "k7" not in kept and len(kept) < 8
        assert all(s.answers("gen")[k].text == f"answer {k[1:]}" for k in kept)
        assert s.dropped_torn_line
    with pytest.raises(StoreError, match="out of disk space"):
        monkeypatch.setattr(store_mod, "os", _FullDisk(budget=0))
        atomic_write(tmp_path / "run" / "records.jsonl", b"x" * 100)
    monkeypatch.undo()
    assert not (tmp_path / "run" / "records.jsonl").exists()
    assert not list((tmp_path / "run").glob(".*tmp")), "the temporary file is removed"


# -- torn tails and atomic writes -------------------------------------------------------


@pytest.mark.parametrize("tail", [b'{"t": "gen", "k": "k9", "v": {"te', b"\0" * 300, b'{"t": "gen"}\n'])
def test_torn_last_record_is_dropped(tmp_path, tail):
    with RunStore.open(tmp_path / "run", {}) as s:
        s.append("gen", [(f"k{i}", _gen(i)) for i in range(3)])
    f = tmp_path / "run" / "answers.jsonl"
    good = f.read_bytes()
    with f.open("ab") as fh:
        fh.write(tail)
    with RunStore.open(tmp_path / "run", {}) as s:
        assert sorted(s.answers("gen")) == ["k0", "k1", "k2"]
        assert s.answers("gen")["k1"].text == "answer 1"
        assert s.dropped_torn_line
        s.append("gen", [("k3", _gen(3))])
    assert f.read_bytes().startswith(good) and f.read_bytes().count(b"\n") == 4


def test_interrupted_atomic_write_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "records.jsonl"
    target.write_bytes(b"old\n")

    def boom(fd: int) -> None:
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(store_mod.os, "fsync", boom)
    with pytest.raises(StoreError, match="cannot write"):
        atomic_write(target, b"new\n")
    monkeypatch.undo()
    assert target.read_bytes() == b"old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["records.jsonl"]


def test_a_run_is_complete_only_with_its_records(tmp_path):
    with RunStore.open(tmp_path / "run", {}) as s:
        s.append("gen", [("k0", _gen(0))])
        (tmp_path / "run" / ".records.jsonl.999.tmp").write_text("half a file")  # a writer that died
        assert not s.complete
        s.write_records([])
        assert s.complete


def test_an_interrupted_demo_build_leaves_no_half_built_folder(demo, tmp_path, monkeypatch):
    """Ctrl-C in a demo build removes its work folder; a killed build's leftovers go at the next build."""
    from harness.demo import build

    out = tmp_path / "demo"
    out.mkdir()
    shutil.copytree(demo["base"], out / "base")
    (out / "BUILD.json").write_text(json.dumps({"key": "older", "base_key": build.base_key()}))
    (out / ".building-0123456789abcdef").mkdir()  # a build killed with SIGKILL

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(build, "_train", interrupted)
    with pytest.raises(KeyboardInterrupt):
        build.build_demo(out)
    assert not list(out.glob(".building-*"))
    assert (out / "base").is_dir() and not (out / "ft-answer-only").exists()
    assert json.loads((out / "BUILD.json").read_text())["key"] == "older"  # the stamp still says what is there
