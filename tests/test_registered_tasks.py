"""lm-eval's registered tasks on the local data root (issue 13): binding, groups, dependency
checks, store key, and one `regress run` over real benchmarks with no network.

The data root is ``../shared/benchmarks`` beside the repository (CI has a copy of shared/
beside its clone); without it these tests are skipped. Indexing lm-eval's registry takes
~15 s, once per process.
"""

from __future__ import annotations

import json
import shutil
import socket
import sys
from pathlib import Path

import pytest

from harness.cli import main
from tests.conftest import REPO

DATA = REPO.parent / "shared" / "benchmarks"
pytestmark = pytest.mark.skipif(not (DATA / "MANIFEST.json").is_file(), reason=f"no benchmark data root at {DATA}")

# The run: gsm8k, two MMLU subjects, ARC-Challenge, HellaSwag, two BBH tasks and IFEval.
RUN_TASKS = (
    "gsm8k,mmlu_high_school_geography,mmlu_abstract_algebra,arc_challenge,hellaswag,"
    "bbh_zeroshot_sports_understanding,bbh_zeroshot_boolean_expressions,ifeval"
)
LIMIT = 20


def _adhoc(names: str, data: Path = DATA):
    from harness.suites import adhoc_suite

    return adhoc_suite(names.split(","), str(data))


def _copy_dataset(root: Path, folder: str, splits: tuple[str, ...]) -> None:
    for split in splits:
        dst = root / folder / f"{split}.jsonl"
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(DATA / folder / f"{split}.jsonl", dst)


# -- binding ------------------------------------------------------------------------


def test_registered_task_reads_its_own_config_on_local_files():
    suite = _adhoc("gsm8k,hellaswag")
    gsm8k, hellaswag = suite.tasks
    cfg = gsm8k.config
    assert cfg is not None
    # lm-eval's own prompt, filters and metric, its few-shot setting
    assert cfg["doc_to_text"] == "Question: {{question}}\nAnswer:"
    assert [f["name"] for f in cfg["filter_list"]] == ["strict-match", "flexible-extract"]
    assert cfg["num_fewshot"] == 5 and cfg["fewshot_split"] == "train"
    # the data: local JSONL, a split without a file is null
    assert cfg["dataset_path"] == "json" and cfg["dataset_name"] is None
    assert cfg["dataset_kwargs"]["data_files"] == {
        "test": str(DATA / "openai__gsm8k/main/test.jsonl"),
        "train": str(DATA / "openai__gsm8k/main/train.jsonl"),
    }
    assert hellaswag.config["training_split"] is None  # HellaSwag's train split is not in the data root
    assert hellaswag.config["validation_split"] == "validation"
    assert gsm8k.fidelity == "" and gsm8k.group is None
    # hooks resolved (!function): HellaSwag's process_docs is lm-eval's function
    assert callable(hellaswag.config["process_docs"])
    assert hellaswag.config["process_docs"].__module__.endswith("hellaswag.utils") or "hellaswag" in str(
        hellaswag.config["process_docs"].__code__.co_filename
    )
    assert "APPROXIMATE" in hellaswag.fidelity  # from MANIFEST.json


def test_a_group_expands_into_its_subtasks_naming_the_group(tmp_path):
    suite_file = tmp_path / "s.yaml"
    suite_file.write_text(
        f"name: s\ndata: {DATA}\ntasks: [mmlu, bbh_zeroshot, gsm8k]\n"
        "metrics: {bbh_zeroshot: 'exact_match,flexible-extract', gsm8k: 'exact_match,flexible-extract'}\n"
    )
    from harness.suites import load_suite

    suite = load_suite(str(suite_file))
    groups: dict[str | None, list[str]] = {}
    for t in suite.tasks:
        groups.setdefault(t.group, []).append(t.name)
    assert len(groups["mmlu"]) == 57 and "mmlu_high_school_geography" in groups["mmlu"]
    assert len(groups["bbh_zeroshot"]) == 27 and "bbh_zeroshot_snarks" in groups["bbh_zeroshot"]
    assert groups[None] == ["gsm8k"]
    assert {t.gate_metric for t in suite.tasks if t.group == "bbh_zeroshot"} == {"exact_match,flexible-extract"}
    assert {t.gate_metric for t in suite.tasks if t.group == "mmlu"} == {None}
    assert suite.task("gsm8k").gate_metric == "exact_match,flexible-extract"
    # every subject on its own files, task version kept
    geo = suite.task("mmlu_high_school_geography").config
    assert geo["dataset_kwargs"]["data_files"]["test"].endswith("cais__mmlu/high_school_geography/test.jsonl")
    assert geo["metadata"]["version"] == 1.0


def test_a_gate_metric_the_task_does_not_have_is_one_line(tmp_path):
    from harness.errors import SuiteError
    from harness.suites import load_suite

    suite_file = tmp_path / "s.yaml"
    suite_file.write_text(f"name: s\ndata: {DATA}\ntasks: [gsm8k]\nmetrics: {{gsm8k: 'exact_match,loose'}}\n")
    with pytest.raises(SuiteError, match=r"gsm8k has no metric 'exact_match,loose'; it has: exact_match,strict-match"):
        load_suite(str(suite_file))


def test_store_key_covers_data_hashes_and_task_version(tmp_path, monkeypatch):
    from harness.config import RunConfig
    from harness.store import store_meta

    root = tmp_path / "data"
    _copy_dataset(root, "openai__gsm8k/main", ("test", "train"))
    cfg = RunConfig(suite="demo", tasks="gsm8k", data=str(root))

    def key() -> str:
        from harness.suites import suite_for

        return store_meta("/ckpt", "fp", suite_for(cfg), cfg)["key"]

    first = key()
    assert key() == first  # same data, same key
    test = root / "openai__gsm8k/main/test.jsonl"
    lines = test.read_text().splitlines()
    test.write_text("\n".join([lines[1], lines[0], *lines[2:]]) + "\n")  # same rows, another order
    changed_data = key()
    assert changed_data != first

    import lm_eval.tasks._yaml_loader as loader

    real = loader.load_yaml

    def bumped(path, **kw):
        cfg = real(path, **kw)
        return {**cfg, "metadata": {**cfg.get("metadata", {}), "version": 99.0}}

    monkeypatch.setattr(loader, "load_yaml", bumped)
    assert key() not in (first, changed_data)  # a new task version is a new key


def test_baselines_judge_a_stored_run_on_the_data_root_it_was_run_on(demo, tmp_path, monkeypatch):
    """A run made with --data (or $REGRESS_DATA) stores its data root, so `regress baselines`
    rebuilds the suite on those files, not on the default root, and does not call it changed."""
    from harness import checkpoint
    from harness.baselines import RunInfo, staleness
    from harness.config import RunConfig
    from harness.store import store_meta
    from harness.suites import suite_for

    root = tmp_path / "data"
    _copy_dataset(root, "openai__gsm8k/main", ("test", "train"))
    test = root / "openai__gsm8k/main/test.jsonl"
    lines = test.read_text().splitlines()
    test.write_text("\n".join([lines[1], lines[0], *lines[2:]]) + "\n")  # not the default root's bytes
    files = checkpoint.fingerprint_files(demo["base"])

    def stored(cfg: RunConfig) -> RunInfo:
        meta = store_meta(str(demo["base"]), checkpoint.fingerprint_of(files), suite_for(cfg), cfg, files)
        return RunInfo(tmp_path, meta, True, 0, 0, 0.0, None)

    monkeypatch.delenv("REGRESS_DATA", raising=False)
    run = stored(RunConfig(suite="demo", tasks="gsm8k", data=str(root)))
    assert run.meta["data"] == str(root) and staleness(run) is None
    forgotten = RunInfo(tmp_path, {**run.meta, "data": None}, True, 0, 0, 0.0, None)
    assert staleness(forgotten).startswith("suite unreadable: task gsm8k")  # a run that forgot its root
    monkeypatch.setenv("REGRESS_DATA", str(root))
    from_env = stored(RunConfig(suite="demo", tasks="gsm8k"))
    monkeypatch.delenv("REGRESS_DATA")
    assert from_env.meta["data"] == str(root) and staleness(from_env) is None


def test_tasks_flag_builds_a_suite_of_our_own_tasks_without_the_registry(monkeypatch):
    """--tasks demo_add,demo_cmp: the demo's own task YAMLs; lm-eval's registry is not indexed."""
    from harness import tasks
    from harness.config import RunConfig
    from harness.suites import load_suite, suite_for

    def no_index():
        raise AssertionError("lm-eval's registry was indexed for our own tasks")

    monkeypatch.setattr(tasks, "task_index", no_index)
    suite = suite_for(RunConfig(suite="demo", tasks="demo_add,demo_cmp"))
    assert suite.name == "tasks-demo_add-demo_cmp" and [t.name for t in suite.tasks] == ["demo_add", "demo_cmp"]
    demo = load_suite("demo")
    assert suite.task("demo_add").config == demo.task("demo_add").config
    assert suite.policy == {} and not suite.probes.get("termination") and suite.chat_template
    # the hash covers the names and the tasks' content
    other = suite_for(RunConfig(suite="demo", tasks="demo_add"))
    assert len({suite.content_hash, other.content_hash, demo.content_hash}) == 3
    # stored runs name it so, and `regress baselines` loads it again by that name
    assert suite.path == "tasks:demo_add,demo_cmp" and load_suite(suite.path).content_hash == suite.content_hash


# -- checks before any model loads ---------------------------------------------------


@pytest.fixture
def no_model(monkeypatch):
    """Fail the test if a run gets as far as reading a checkpoint."""
    import harness.pipeline

    def preflight(*a, **k):
        raise AssertionError("a checkpoint was read before the suite's checks")

    monkeypatch.setattr(harness.pipeline, "preflight", preflight)


def _refused(tmp_path, capsys, *args: str) -> str:
    store, out = tmp_path / "store", tmp_path / "report"
    code = main(
        ["compare", "--base", "ckpt-a", "--model", "ckpt-b", "--store", str(store), "--out", str(out), *args]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("regress: error: "), err
    assert not store.exists() and not out.exists()
    return lines[0]


def test_missing_data_file_is_one_line_naming_where_it_goes(tmp_path, capsys, no_model):
    root = tmp_path / "data"
    _copy_dataset(root, "openai__gsm8k/main", ("train",))  # the test split is missing
    line = _refused(tmp_path, capsys, "--tasks", "gsm8k", "--data", str(root))
    assert "openai/gsm8k" in line and "config main" in line and "split test" in line
    assert str(root / "openai__gsm8k/main/test.jsonl") in line


def test_dataset_in_neither_place_is_one_line(tmp_path, capsys, no_model):
    root = tmp_path / "data"
    root.mkdir()
    line = _refused(tmp_path, capsys, "--tasks", "arc_easy", "--data", str(root))
    assert "allenai/ai2_arc" in line and "ARC-Easy" in line and "split test" in line
    assert str(root / "allenai__ai2_arc/ARC-Easy/test.jsonl") in line


def test_unknown_task_is_one_line(tmp_path, capsys, no_model):
    line = _refused(tmp_path, capsys, "--tasks", "gsm8k,no_such_task_xyz", "--data", str(DATA))
    assert "unknown task 'no_such_task_xyz'" in line


def test_missing_scorer_dependency_is_one_line_naming_the_install(tmp_path, capsys, no_model, monkeypatch):
    monkeypatch.setitem(sys.modules, "langdetect", None)  # import langdetect now fails
    line = _refused(tmp_path, capsys, "--tasks", "ifeval", "--data", str(DATA))
    assert "ifeval" in line and "'langdetect'" in line and "regress[tasks]" in line


def test_missing_punkt_tab_without_its_package_is_one_line(tmp_path, capsys, no_model, monkeypatch):
    import nltk

    def find(resource, *a, **k):
        raise LookupError(resource)

    monkeypatch.setattr(nltk.data, "find", find)
    monkeypatch.setitem(sys.modules, "punkt.data", None)
    line = _refused(tmp_path, capsys, "--tasks", "ifeval", "--data", str(DATA))
    assert "punkt_tab" in line and "regress[tasks]" in line


def test_punkt_tab_written_from_the_package_is_nltk_s_tables(tmp_path, monkeypatch):
    import nltk
    from nltk.tokenize.punkt import PunktTokenizer
    from punkt.data import load_module

    from harness import tasks

    monkeypatch.setattr(sys, "prefix", str(tmp_path / "env"))
    monkeypatch.setattr(nltk.data, "path", [str(tmp_path / "env" / "nltk_data")])
    tasks.ensure_punkt_tab()
    assert (tmp_path / "env/nltk_data/tokenizers/punkt_tab/english/collocations.tab").is_file()
    tok = PunktTokenizer("english")
    model = load_module("english")
    assert tok._params.abbrev_types == set(model.ABBREV_TYPES)
    assert tok._params.collocations == set(model.COLLOCATIONS)
    assert tok._params.sent_starters == set(model.SENT_STARTERS)
    assert dict(tok._params.ortho_context) == dict(model.ORTHO_CONTEXT)
    assert tok.tokenize("Mr. Smith went to Washington. He arrived at 5 p.m. on Jan. 3rd.") == [
        "Mr. Smith went to Washington.",
        "He arrived at 5 p.m. on Jan. 3rd.",
    ]


def test_code_execution_task_needs_the_switch(tmp_path, capsys, no_model, monkeypatch):
    monkeypatch.delenv("HF_ALLOW_CODE_EVAL", raising=False)
    line = _refused(tmp_path, capsys, "--tasks", "humaneval", "--data", str(DATA))
    assert "HF_ALLOW_CODE_EVAL=1" in line


def test_core_suite_loads_offline():
    from harness.suites import load_suite

    suite = load_suite("core", str(DATA))
    names = {t.group or t.name for t in suite.tasks}
    assert names == {
        "gsm8k", "mmlu", "arc_challenge", "arc_easy", "hellaswag", "winogrande", "piqa", "boolq",
        "bbh_zeroshot", "ifeval", "truthfulqa_gen", "triviaqa",
    }  # fmt: skip
    assert "humaneval" not in names
    assert all(t.config and t.config["dataset_path"] == "json" for t in suite.tasks)
    fidelity = {t.name: t.fidelity for t in suite.tasks}
    assert "APPROXIMATE" in fidelity["hellaswag"] and "SUBSET" in fidelity["triviaqa"]


# -- one run over real benchmarks ----------------------------------------------------


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a network connection fails the run (the hub included)."""

    def refuse(*a, **k):
        raise AssertionError(f"network access attempted: {a[1:] or k}")

    real_connect = socket.socket.connect

    def connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            raise AssertionError(f"network access attempted: {address}")
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.mark.slow
def test_run_over_real_benchmarks_with_no_network(base_ckpt, session_store, tmp_path, no_network, capsys):
    """The issue's `regress run`: every task, 20 items each, every metric of every filter recorded."""
    import time

    t0 = time.monotonic()
    code = main(
        ["run", "--model", str(base_ckpt), "--tasks", RUN_TASKS, "--data", str(DATA), "--limit", str(LIMIT),
         "--store", str(session_store)]
    )  # fmt: skip
    printed = capsys.readouterr()
    assert code == 0, printed.err[-2000:]
    print(f"regress run over {RUN_TASKS}: {time.monotonic() - t0:.0f} s", file=sys.stderr)
    (records_file,) = [p for p in session_store.glob("*/records.jsonl") if _is_run(p.parent, RUN_TASKS)]
    records = [json.loads(line) for line in records_file.read_text().splitlines()]
    by_task: dict[str, list[dict]] = {}
    for r in records:
        by_task.setdefault(r["task"], []).append(r)
    assert sorted(by_task) == sorted(RUN_TASKS.split(","))
    assert all(len(v) == LIMIT for v in by_task.values())
    for r in by_task["gsm8k"]:
        assert set(r["metrics"]) == {"exact_match,strict-match", "exact_match,flexible-extract"}
        assert r["metric"] == "exact_match,strict-match" and r["score"] == r["metrics"]["exact_match,strict-match"]
        assert r["prompt"].count("Question:") == 6  # lm-eval's 5-shot prompt
    for r in by_task["ifeval"]:
        assert set(r["metrics"]) == {
            f"{m},none" for m in ("prompt_level_strict_acc", "inst_level_strict_acc", "prompt_level_loose_acc",
                                  "inst_level_loose_acc")
        }  # fmt: skip
    for r in by_task["hellaswag"]:
        assert set(r["metrics"]) == {"acc,none", "acc_norm,none"} and r["kind"] == "multiple_choice"


def _is_run(folder: Path, tasks: str) -> bool:
    meta = json.loads((folder / "meta.json").read_text())
    return meta.get("suite_path") == f"tasks:{tasks}" and meta.get("limit") == LIMIT


@pytest.mark.slow
def test_fidelity_notes_reach_the_report(base_ckpt, session_store, tmp_path):
    """HellaSwag's local copy is approximate: the report's warnings say so (records from the run above)."""
    from harness.config import RunConfig
    from harness.pipeline import comparison_of, run_one
    from harness.registry import Policy
    from harness.report import write_report
    from harness.suites import suite_for

    cfg = RunConfig(suite="demo", tasks=RUN_TASKS, data=str(DATA), limit=LIMIT, store_dir=str(session_store))
    run = run_one(str(base_ckpt), cfg)
    cmp = comparison_of(run, run, suite_for(cfg), "hf", Policy())
    write_report(cmp, tmp_path / "rep")
    warnings = json.loads((tmp_path / "rep" / "summary.json").read_text())["warnings"]
    assert any(w.startswith("hellaswag: local data: APPROXIMATE") for w in warnings), warnings
    assert any(w.startswith("arc_challenge: local data: ids rebuilt") for w in warnings), warnings


def test_task_index_is_kept_on_disk_and_rebuilt_when_a_yaml_changes(tmp_path, monkeypatch):
    from lm_eval.tasks._index import TaskIndex

    from harness.tasks import cached_index

    root, cache = tmp_path / "tasks", tmp_path / "cache"
    (root / "a").mkdir(parents=True)
    (root / "a" / "t1.yaml").write_text("task: t1\ndataset_path: x\noutput_type: generate_until\n")
    (root / "a" / "g.yaml").write_text("group: g\ntask: [t1]\n")
    first = cached_index(root, cache)
    assert first == TaskIndex.build([root]) and set(first) == {"t1", "g"}
    assert len(list(cache.glob("lm-eval-index-*.pickle"))) == 1

    def no_build(paths):
        raise AssertionError("the YAMLs were parsed again")

    with monkeypatch.context() as m:  # unchanged YAMLs: served from the cache, nothing parsed
        m.setattr(TaskIndex, "build", staticmethod(no_build))
        assert cached_index(root, cache) == first

    (root / "a" / "t2.yaml").write_text("task: t2\ndataset_path: x\noutput_type: generate_until\n")
    second = cached_index(root, cache)
    assert set(second) == {"t1", "t2", "g"}
    (file,) = cache.glob("lm-eval-index-*.pickle")  # the stale index is gone
    file.write_bytes(b"torn")
    assert cached_index(root, cache) == second  # a torn cache file is rebuilt, not trusted
    blocked = tmp_path / "not-a-folder"  # a cache that cannot be written costs time, not the answer
    blocked.write_text("")
    (root / "a" / "t2.yaml").write_text("task: t3\ndataset_path: x\noutput_type: generate_until\n")
    assert set(cached_index(root, blocked)) == {"t1", "t3", "g"}


def test_ifeval_language_checks_score_the_same_text_the_same_every_time():
    """IFEval's language checks call langdetect, which draws at random unless seeded ("tw"
    is English about half the time): regress seeds it before lm-eval scores, so that a
    byte-identical answer of base and candidate cannot flip."""
    from lm_eval.tasks.ifeval.instructions import LowercaseLettersEnglishChecker

    from harness.runner import seed_scorers

    seed_scorers()
    check = LowercaseLettersEnglishChecker("change_case:english_lowercase")
    assert len({check.check_following("tw") for _ in range(50)}) == 1
