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

A task is one of our own lm-eval task YAMLs over local JSONL (relative ``data_files`` are
resolved against the YAML's folder, since lm-eval wants absolute paths) or a task that
lm-eval has registered (its data must be in the local Hugging Face cache). YAML names
things; Python does things: task YAMLs may not use ``!function``.

``load_suite`` returns a ``Suite`` whose ``content_hash`` covers the suite file, every task
YAML and every data file, so a changed item set never reuses a stale baseline.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import yaml

from harness.errors import SuiteError
from harness.types import Suite, TaskSpec

# The built-in suites: the top-level suites/ of the source tree (a checkout, an editable
# install), which a wheel carries as harness/builtin_suites/ (setup.py copies it at build time).
_PACKAGED_SUITES = Path(__file__).resolve().parent / "builtin_suites"
BUILTIN_SUITES = _PACKAGED_SUITES if _PACKAGED_SUITES.is_dir() else Path(__file__).resolve().parent.parent / "suites"
SUITE_KEYS = {"name", "version", "description", "task_dirs", "tasks", "chat_template", "policy", "probes"}


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


def _registered_tasks() -> set[str]:
    from lm_eval.tasks import TaskManager

    return set(TaskManager().all_tasks)


def load_suite(name_or_path: str) -> Suite:
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
    h = hashlib.sha256(path.read_bytes())
    specs: list[TaskSpec] = []
    registered: set[str] | None = None
    for name in tasks:
        yml = next((d / f"{name}.yaml" for d in dirs if (d / f"{name}.yaml").is_file()), None)
        if yml is not None:
            cfg = _load_task_yaml(yml)
            if cfg["task"] != name:
                raise SuiteError(f"{yml}: declares task {cfg['task']!r}, expected {name!r}")
            files = _resolve_data_files(cfg, yml.parent)
            _check_items(name, files)
            h.update(yml.read_bytes())
            for f in files:
                h.update(f.read_bytes())
            specs.append(TaskSpec(name, cfg, str(yml)))
            continue
        if registered is None:
            registered = _registered_tasks()
        if name not in registered:
            raise SuiteError(
                f"unknown task {name!r} in suite {path.name} (not in {raw.get('task_dirs', [])} nor lm-eval's registry)"
            )
        h.update(name.encode())
        specs.append(TaskSpec(name, None, "lm-eval registry"))
    return Suite(
        name=str(raw.get("name", path.stem)),
        path=str(path),
        version=str(raw.get("version", "1")),
        tasks=tuple(specs),
        chat_template=bool(raw.get("chat_template", True)),
        content_hash=h.hexdigest()[:16],
        policy=dict(raw.get("policy") or {}),
        probes=dict(raw.get("probes") or {}),
    )
