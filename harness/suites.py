"""Suites: a named set of lm-eval tasks (plus probes and a gate policy), loaded and checked.

A suite is a YAML file, e.g. ``suites/demo.yaml``; a suite name is looked up in the user's
own ``./suites/`` first, then among the built-in suites (the repository's ``suites/``, which
the wheel carries as ``harness/builtin_suites/``)::

    name: demo
    version: 1
    task_dirs: [demo]          # folders (relative to this file) with lm-eval task YAMLs
    tasks: [demo_add, demo_cmp]
    chat_template: true        # prompts go through the checkpoint's chat template
    policy: {...}              # optional gate policy overrides (see harness.gate)
    data: ../../shared/benchmarks   # optional data root for registered tasks (relative to this file)
    metrics: {gsm8k: "exact_match,flexible-extract"}   # optional: the metric that gates, per task or group

A task is one of our own lm-eval task YAMLs over local JSONL (relative ``data_files`` are
resolved against the YAML's folder, since lm-eval wants absolute paths; YAML names things,
Python does things: our task YAMLs may not use ``!function``), or a task or group that
lm-eval has registered, run with lm-eval's own config (``harness.tasks``): on the files of a
data root where it holds the dataset (``--data DIR``, else ``$REGRESS_DATA``, else the suite's
``data:``; a suite's root that does not exist is skipped, so a suite can travel to machines that
load from the hub), else from the Hugging Face cache. A group is expanded into its subtasks.
Indexing lm-eval's registry takes ~15 s (~1 s once kept on disk: ``tasks.task_index``), so it
is done only when a suite names a task that is not one of its own YAMLs.

``load_suite`` returns a ``Suite`` whose ``content_hash`` covers the suite file, every task
YAML and every data file (for a registered task: lm-eval's task version, its YAML and the data
files' hashes or the cached dataset's fingerprint), so a changed item set never reuses a stale
baseline. ``adhoc_suite`` builds a suite from task names (``--tasks a,b,c``); ``suite_for(cfg)``
is the one the run configuration asks for.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from harness import defaults
from harness.errors import SuiteError
from harness.types import Suite, TaskSpec

if TYPE_CHECKING:
    from harness.config import RunConfig

# The built-in suites: the top-level suites/ of the source tree (a checkout, an editable
# install), which a wheel carries as harness/builtin_suites/ (setup.py copies it at build time).
_PACKAGED_SUITES = Path(__file__).resolve().parent / "builtin_suites"
BUILTIN_SUITES = _PACKAGED_SUITES if _PACKAGED_SUITES.is_dir() else Path(__file__).resolve().parent.parent / "suites"
SUITE_KEYS = {
    "name",
    "version",
    "description",
    "task_dirs",
    "tasks",
    "chat_template",
    "policy",
    "probes",
    "data",
    "metrics",
}


def suite_dirs() -> list[Path]:
    """Where a suite name is looked up, first match first: the user's own ``./suites/`` (relative
    to the working directory), then the built-in suites."""
    return [Path.cwd() / "suites", BUILTIN_SUITES]


def resolve_suite_path(name_or_path: str) -> Path:
    """A suite YAML path as given, or a suite name: ``suites/NAME.yaml`` in ``suite_dirs()``."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml"):
        if not p.is_file():
            raise SuiteError(f"suite file not found: {name_or_path}")
        return p.resolve()
    for d in suite_dirs():
        cand = d / f"{name_or_path}.yaml"
        if cand.is_file():
            return cand.resolve()
    known = sorted({f.stem for d in suite_dirs() for f in d.glob("*.yaml")})
    raise SuiteError(f"unknown suite {name_or_path!r}; known suites: {', '.join(known) or 'none'}")


def read_yaml(path: Path) -> Any:
    """Parse YAML, turning syntax errors into 'file:line: problem'."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise SuiteError(f"cannot read {path}: {e}") from e
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = f":{mark.line + 1}" if mark else ""
        raise SuiteError(f"malformed YAML in {path}{line}: {e.problem or e.context}") from e
    except yaml.YAMLError as e:
        raise SuiteError(f"malformed YAML in {path}: {e}") from e


def _resolve_data_files(cfg: dict[str, Any], base: Path) -> list[Path]:
    """Make relative ``dataset_kwargs.data_files`` absolute; return the files."""
    dk = cfg.get("dataset_kwargs") or {}
    df = dk.get("data_files")
    if df is None:
        return []
    files: list[Path] = []

    def fix(v: Any) -> Any:
        if isinstance(v, str):
            p = Path(v) if Path(v).is_absolute() else (base / v)
            if not p.is_file():
                raise SuiteError(f"data file {v} of task {cfg.get('task')} not found (looked in {base})")
            files.append(p.resolve())
            return str(p.resolve())
        if isinstance(v, list):
            return [fix(x) for x in v]
        if isinstance(v, dict):
            return {k: fix(x) for k, x in v.items()}
        raise SuiteError(f"data_files of task {cfg.get('task')} must be paths, got {type(v).__name__}")

    cfg["dataset_kwargs"] = {**dk, "data_files": fix(df)}
    return files


def _check_items(name: str, files: list[Path]) -> None:
    """Reject an empty task or duplicate item ids in our own JSONL data."""
    for f in files:
        if f.suffix != ".jsonl":
            continue
        ids: set[str] = set()
        n = 0
        for lineno, line in enumerate(f.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as e:
                raise SuiteError(f"{f}:{lineno}: not valid JSON ({e})") from e
            n += 1
            if isinstance(row, dict) and "id" in row:
                if str(row["id"]) in ids:
                    raise SuiteError(f"{f}:{lineno}: duplicate item id {row['id']!r} in task {name}")
                ids.add(str(row["id"]))
        if n == 0:
            raise SuiteError(f"task {name} is empty: no items in {f}")


def _load_task_yaml(path: Path) -> dict[str, Any]:
    if "!function" in path.read_text():
        raise SuiteError(f"{path}: '!function' is not allowed in regress task YAMLs")
    cfg = read_yaml(path)
    if not isinstance(cfg, dict) or "task" not in cfg:
        raise SuiteError(f"{path}: not an lm-eval task YAML (no 'task' key)")
    return cfg


def data_root(given: str | None, suite_value: Any = None, suite_dir: Path | None = None) -> Path | None:
    """Where registered tasks look for local data: ``given`` (``--data``), else ``$REGRESS_DATA``,
    else the suite's ``data:`` (relative to the suite file; skipped when it does not exist)."""
    explicit = given or defaults.data_env()
    if explicit:
        root = Path(explicit).expanduser()
        if not root.is_dir():
            how = "--data" if given else defaults.DATA_ENV
            raise SuiteError(f"data root {explicit} ({how}) is not a folder")
        return root.resolve()
    if suite_value is None:
        return None
    if not isinstance(suite_value, str):
        raise SuiteError(f"the suite's 'data' must be a folder path, got {suite_value!r}")
    root = Path(suite_value).expanduser()
    root = root if root.is_absolute() or suite_dir is None else suite_dir / root
    return root.resolve() if root.is_dir() else None


def _gate_metrics(raw: Any, where: str) -> dict[str, str]:
    from harness.tasks import normalise_metric

    if raw is None:
        return {}
    if not isinstance(raw, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in raw.items()):
        raise SuiteError(f"{where}: 'metrics' must map task or group names to a metric (\"exact_match,strict-match\")")
    return {k: normalise_metric(v) for k, v in raw.items()}


def _build(
    name: str,
    path: str,
    header: bytes,
    tasks: Sequence[str],
    dirs: Sequence[Path],
    root: Path | None,
    metrics: Mapping[str, str],
    **fields: Any,
) -> Suite:
    """The Suite of ``tasks``: each our own task YAML (first of ``dirs`` that has it) or a task or
    group lm-eval has registered; the content hash over ``header`` and every task's content."""
    h = hashlib.sha256(header)
    specs: list[TaskSpec] = []
    for task in tasks:
        yml = next((d / f"{task}.yaml" for d in dirs if (d / f"{task}.yaml").is_file()), None)
        if yml is not None:
            cfg = _load_task_yaml(yml)
            if cfg["task"] != task:
                raise SuiteError(f"{yml}: declares task {cfg['task']!r}, expected {task!r}")
            files = _resolve_data_files(cfg, yml.parent)
            _check_items(task, files)
            h.update(yml.read_bytes())
            for f in files:
                h.update(f.read_bytes())
            gate = metrics.get(task)
            if gate is not None:
                from harness.tasks import _check_gate_metric

                _check_gate_metric(task, cfg, gate)
            specs.append(TaskSpec(task, cfg, str(yml), gate_metric=gate))
            continue
        from harness.tasks import bind, expand

        for leaf in expand(task):
            spec, parts = bind(leaf, root, metrics.get(leaf.name) or metrics.get(task))
            h.update(json.dumps(parts, sort_keys=True, default=str).encode())
            specs.append(spec)
    names = [t.name for t in specs]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise SuiteError(f"suite {name}: task(s) {', '.join(twice)} listed twice (directly or through a group)")
    unused = set(metrics) - set(names) - {t.group for t in specs if t.group} - set(tasks)
    if unused:
        raise SuiteError(f"suite {name}: 'metrics' names {', '.join(sorted(unused))}, not a task or group of the suite")
    return Suite(name=name, path=path, tasks=tuple(specs), content_hash=h.hexdigest()[:16], **fields)


def load_suite(name_or_path: str, data: str | None = None) -> Suite:
    """The suite ``name_or_path``; ``data`` is ``--data`` (a data root for registered tasks).
    ``tasks:a,b,c`` is the ad-hoc suite of those tasks (``adhoc_suite``; its ``path`` is spelled so)."""
    if name_or_path.startswith(ADHOC):
        return adhoc_suite(name_or_path[len(ADHOC) :].split(","), data)
    path = resolve_suite_path(name_or_path)
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise SuiteError(f"{path}: a suite must be a mapping with 'name' and 'tasks'")
    unknown = set(raw) - SUITE_KEYS
    if unknown:
        raise SuiteError(f"{path}: unknown suite key(s): {', '.join(sorted(unknown))}")
    tasks = raw.get("tasks")
    if not isinstance(tasks, list) or not tasks or not all(isinstance(t, str) for t in tasks):
        raise SuiteError(f"{path}: 'tasks' must be a non-empty list of task names")
    if len(set(tasks)) != len(tasks):
        raise SuiteError(f"{path}: a task is listed twice in 'tasks'")
    dirs = [path.parent / d for d in raw.get("task_dirs", [])]
    return _build(
        str(raw.get("name", path.stem)), str(path), path.read_bytes(), tasks, dirs,
        data_root(data, raw.get("data"), path.parent), _gate_metrics(raw.get("metrics"), str(path)),
        version=str(raw.get("version", "1")),
        chat_template=bool(raw.get("chat_template", True)),
        policy=dict(raw.get("policy") or {}),
        probes=dict(raw.get("probes") or {}),
    )  # fmt: skip


# how an ad-hoc suite's path is spelled (store meta, `regress baselines`), and loaded again by load_suite
ADHOC = "tasks:"


def builtin_task_dirs() -> list[Path]:
    """The task folders of the built-in suites (``suites/demo/``...): where ``--tasks`` finds our own tasks."""
    return sorted(d for d in BUILTIN_SUITES.iterdir() if d.is_dir() and any(d.glob("*.yaml")))


def adhoc_suite(names: Sequence[str], data: str | None = None) -> Suite:
    """A suite of the tasks ``names`` (``--tasks a,b,c``): our own tasks (the built-in suites'
    task folders) or lm-eval's registered ones, chat template on, the policy's defaults, no
    termination probe. Its content hash covers the names and every task's content and data."""
    names = [n.strip() for n in names if n.strip()]
    if not names:
        raise SuiteError("--tasks names no task (give a,b,c)")
    if len(set(names)) != len(names):
        raise SuiteError("--tasks names a task twice")
    header = json.dumps({"tasks": names}).encode()
    digest = hashlib.sha256(header).hexdigest()[:8]
    # named by the tasks when short: it names the report folder
    label = "tasks-" + ("-".join(names) if len(",".join(names)) <= 40 else digest)
    return _build(
        label, ADHOC + ",".join(names), header, names, builtin_task_dirs(), data_root(data), {},
        version="1", chat_template=True,
    )  # fmt: skip


def suite_for(cfg: RunConfig) -> Suite:
    """The suite a run configuration asks for: ``--tasks`` when given, else ``--suite``."""
    if cfg.tasks:
        return adhoc_suite(cfg.tasks.split(","), cfg.data)
    return load_suite(cfg.suite, cfg.data)
