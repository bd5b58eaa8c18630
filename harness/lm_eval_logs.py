"""Runs people already have: lm-eval's ``--log_samples`` output folder as a side of a comparison.

``regress compare --base-samples DIR --model-samples DIR`` (either side may instead be a
checkpoint regress runs: ``--base-samples DIR --model CKPT``, ``--base CKPT --model-samples DIR``)
and ``regress trend`` with such folders among its checkpoints read what ``lm_eval run
--log_samples --output_path DIR`` wrote (``evaluation_tracker``): ``results_<date>.json`` and
one ``samples_<task>_<date>.jsonl`` per task, in DIR or one folder down (lm-eval's
model-name folder). The newest results file is the run; its samples files share its date.

* ``read_log``: the results file (task configs and versions, group structure, the limit, the
  model and its args, lm-eval's version) and every task's samples, checked whole: a line
  that is not JSON, an item missing a filter, fewer items than the results file counts, a
  task without its samples file: one line, nothing written.
* ``log_records``: one ``Record`` per (task, doc) as ``runner.records_of`` makes them from a
  live run (every metric of every filter, the raw response, the filtered answer, the target,
  the prompt). Finish reasons are not in a log: a response whose token count (``--tokenizer``,
  else the live checkpoint's, else the log's own ``pretrained=`` folder) reaches the task's
  ``max_gen_toks`` is non-terminated ("length"), any other stopped ("stop"); tail loops come
  from those tokens.
* ``align``: items pair by (task, doc) and must agree on lm-eval's ``doc_hash`` and
  ``target_hash`` (regress's own item hash and target where a side was run here); a differing
  ``prompt_hash`` is refused naming the first such item unless ``--allow-prompt-change``.
  Tasks or items on one side only are named and left out; a differing task version warns.
* ``compare`` / ``trend``: the usual stages (``pipeline.comparison_of``, the report), with
  ``Comparison.sources`` saying where each side came from.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from harness.config import RunConfig
from harness.errors import RegressError
from harness.runner import _text_hash, gate_key, item_hash, item_metrics
from harness.types import Checkpoint, Comparison, LoadedCheckpoint, Record, RunResult, RunSource, Suite, TaskSpec

Sample = Mapping[str, Any]
Key = tuple[str, str]  # (task, item id)
REQUIRED = ("doc_id", "doc", "target", "arguments", "resps", "filtered_resps", "filter", "metrics",
            "doc_hash", "prompt_hash", "target_hash")  # fmt: skip
LM_EVAL_MAX_GEN_TOKS = 256  # lm-eval's default where a task sets none
ON_LOGS = (
    "accuracy, flips and McNemar on every metric of every filter; non-termination (the response "
    "encoded again against the task's max_gen_toks: a lower bound, as a model that ran to the cap in "
    "more tokens than the encoding has reads as stopped); tail repetition (from those tokens); premature endings"
)
NEED_LIVE = (
    "stop-token and base-answer drift, the termination probe, the end-of-turn configuration lint, "
    "the knowledge probe (lost items stay 'wrong answer')"
)


class LogError(RegressError):
    """An lm-eval output folder that cannot be read as one run, or two runs that cannot be paired."""


@dataclass(frozen=True)
class LmEvalLog:
    """One lm-eval run as its output folder holds it."""

    folder: str
    results_file: str
    tasks: tuple[str, ...]  # the leaf tasks, in the results file's order
    configs: Mapping[str, Mapping[str, Any]]
    versions: Mapping[str, Any]
    groups: Mapping[str, str]  # leaf task -> the top-level group it was run under
    samples: Mapping[str, tuple[Sample, ...]]
    results: Mapping[str, Any]  # the rest of the results file (config, lm_eval_version, ...)

    @property
    def config(self) -> Mapping[str, Any]:
        c = self.results.get("config")
        return c if isinstance(c, Mapping) else {}

    @property
    def model_args(self) -> str | None:
        a = self.config.get("model_args")  # lm-eval keeps the CLI's "k=v,k=v" string or its parsed dict
        return ",".join(f"{k}={v}" for k, v in a.items()) if isinstance(a, Mapping) else _str(a)

    @property
    def limit(self) -> float | None:
        v = self.config.get("limit")
        return float(v) if isinstance(v, int | float) else None

    def model_path(self) -> str | None:
        """The tokenizer or checkpoint folder the run's model args name, where it is a local folder."""
        a = self.config.get("model_args")
        args = dict(a) if isinstance(a, Mapping) else dict(_kv(p) for p in str(a or "").split(",") if "=" in p)
        for k in ("tokenizer", "pretrained", "model"):
            if isinstance(args.get(k), str) and Path(args[k]).is_dir():
                return str(args[k])
        return None

    def source(self, tokenizer: str | None) -> RunSource:
        gen = {t: dict(self.configs[t].get("generation_kwargs") or {}) for t in self.tasks}
        return RunSource(
            "lm-eval log", self.folder, self.results_file, _str(self.results.get("lm_eval_version")),
            _str(self.results.get("model_name") or self.config.get("model")), self.model_args, self.limit,
            {t: g for t, g in gen.items() if g}, tokenizer,
        )  # fmt: skip

    @property
    def fingerprint(self) -> str:
        """The run's identity: lm-eval's hash of every item's doc, prompt and target per task, and the model."""
        ident = json.dumps([self.results.get("task_hashes"), self.model_args, self.results_file], sort_keys=True)
        return "lm-eval-" + hashlib.sha256(ident.encode()).hexdigest()[:16]


def _args(arg: Any) -> tuple[Any, Any]:
    """One request's (context, continuation-or-gen_kwargs) as an lm-eval log file holds it:
    ``{"arg_0": ..., "arg_1": ...}`` (its ``result_schema``), or a list where a writer kept
    lm-eval's in-memory tuple."""
    if isinstance(arg, dict):
        vals = list(arg.values())
        return vals[0], vals[1]
    return arg[0], arg[1]


def _kv(part: str) -> tuple[str, str]:
    k, _, v = part.partition("=")
    return k.strip(), v.strip()


def _str(v: Any) -> str | None:
    return None if v is None else str(v)


# -- reading a folder -----------------------------------------------------------------


def is_log_folder(path: str | Path) -> bool:
    """An lm-eval output folder (results_*.json here or one folder down) rather than a checkpoint."""
    p = Path(path)
    if not p.is_dir() or (p / "config.json").is_file():
        return False
    return any(p.glob("results_*.json")) or any(p.glob("*/results_*.json"))


def find_results(folder: Path) -> Path:
    """The run's results file: the newest ``results_*.json`` in ``folder`` or one folder down."""
    if not folder.is_dir():
        raise LogError(f"lm-eval output folder {folder} does not exist")
    found = sorted(folder.glob("results_*.json")) or sorted(folder.glob("*/results_*.json"))
    if not found:
        raise LogError(
            f"{folder} holds no lm-eval results_*.json (here or one folder down): not an lm_eval output folder"
        )
    models = sorted({f.parent.name for f in found})
    if len(models) > 1:
        raise LogError(f"{folder} holds the runs of several models ({', '.join(models)}): give one model's folder")
    return found[-1]  # lm-eval names them by date: the newest


def _load_json(path: Path) -> Mapping[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise LogError(f"{path} is not an lm-eval results file ({type(e).__name__}: {str(e)[:120]})") from e
    if not isinstance(data, Mapping) or not isinstance(data.get("configs"), Mapping):
        raise LogError(f"{path} is not an lm-eval results file (no 'configs')")
    return data


def top_groups(group_subtasks: Mapping[str, Sequence[str]]) -> dict[str, str]:
    """Each leaf task under a group -> the outermost group above it, as regress groups a
    suite's named group (``mmlu`` over ``mmlu_stem`` over ``mmlu_anatomy``: ``mmlu``)."""
    parent = {c: g for g, cs in group_subtasks.items() for c in cs or ()}
    out = {}
    for leaf in parent:
        if group_subtasks.get(leaf):
            continue
        top, seen = leaf, set()
        while top in parent and top not in seen:
            seen.add(top)
            top = parent[top]
        out[leaf] = top
    return out


def read_log(folder: str | Path) -> LmEvalLog:
    """The newest run in an lm-eval output folder, every task's samples read and checked."""
    d = Path(folder).resolve()
    results_file = find_results(d)
    res = _load_json(results_file)
    date = results_file.stem.removeprefix("results_")
    tasks = tuple(str(t) for t in res["configs"])
    if not tasks:
        raise LogError(f"{results_file} names no task")
    files = {t: results_file.parent / f"samples_{t}_{date}.jsonl" for t in tasks}
    if not any(f.is_file() for f in files.values()):
        raise LogError(
            f"{results_file.parent} has no samples_*.jsonl of its run {date}: run lm_eval with --log_samples"
        )
    n_samples = _mapping(res, "n-samples")
    samples = {t: read_samples(files[t], t, _effective(n_samples.get(t))) for t in tasks}
    subtasks = _mapping(res, "group_subtasks")
    groups = {t: g for t, g in top_groups(subtasks).items() if t in samples and g != t}
    versions = _mapping(res, "versions")
    return LmEvalLog(
        str(d), str(results_file), tasks, {t: dict(res["configs"][t] or {}) for t in tasks},
        {t: versions.get(t) for t in tasks}, groups, samples,
        {k: v for k, v in res.items() if k not in ("configs", "samples")},
    )  # fmt: skip


def _mapping(res: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    v = res.get(key)
    return v if isinstance(v, Mapping) else {}


def _effective(counts: Any) -> int | None:
    v = counts.get("effective") if isinstance(counts, Mapping) else None
    return int(v) if isinstance(v, int) else None


def read_samples(f: Path, task: str, expected: int | None) -> tuple[Sample, ...]:
    """A task's samples file, whole: every line an lm-eval sample, every item with every
    filter, as many items as the results file counts."""
    if not f.is_file():
        raise LogError(f"{f.parent} has no samples file for task {task} ({f.name}): the run's samples are incomplete")
    rows = []
    for n, line in enumerate(f.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            raise LogError(f"{f}: line {n} is not JSON (a truncated or corrupt samples file)") from None
        missing = [k for k in REQUIRED if k not in row] if isinstance(row, dict) else ["an object"]
        if missing:
            raise LogError(f"{f}: line {n} is not an lm-eval sample (no {missing[0]!r})")
        rows.append(row)
    filters = list(dict.fromkeys(r["filter"] for r in rows))
    by_doc: dict[Any, set[str]] = {}
    for r in rows:
        by_doc.setdefault(r["doc_id"], set()).add(r["filter"])
    short = next((doc for doc, fs in by_doc.items() if len(fs) < len(filters)), None)
    if short is not None:
        lacking = next(x for x in filters if x not in by_doc[short])
        raise LogError(f"{f}: item {short} has no {lacking!r} filter line (a truncated samples file)")
    if expected is not None and len(by_doc) != expected:
        raise LogError(f"{f} holds {len(by_doc)} items, its results file counts {expected} (a truncated samples file)")
    if not rows:
        raise LogError(f"{f} holds no samples")
    return tuple(rows)


# -- records --------------------------------------------------------------------------


def task_spec(log: LmEvalLog, task: str) -> TaskSpec:
    return TaskSpec(task, dict(log.configs[task]), f"lm-eval log ({log.folder})", group=log.groups.get(task))


def _max_gen_toks(log: LmEvalLog, task: str, gen_kwargs: Any) -> int:
    for kw in (gen_kwargs, log.configs[task].get("generation_kwargs")):
        if isinstance(kw, Mapping):
            v = kw.get("max_gen_toks", kw.get("max_new_tokens"))
            if isinstance(v, int | float):
                return int(v)
    return LM_EVAL_MAX_GEN_TOKS


def _response(s: Sample) -> str:
    """The raw generation of a sample: its first request's first response."""
    r: Any = s["resps"]
    while isinstance(r, list) and r:
        r = r[0]
    return "" if isinstance(r, list) or r is None else str(r)


def log_records(log: LmEvalLog, tokenizer: Any) -> tuple[list[Record], dict[Key, tuple[str, str, str]]]:
    """Every task's records, in the log's task order, and lm-eval's (doc, prompt, target)
    hashes of each item."""
    records: list[Record] = []
    hashes: dict[Key, tuple[str, str, str]] = {}
    for task in log.tasks:
        spec = task_spec(log, task)
        by_doc: dict[int, list[Sample]] = {}
        for s in log.samples[task]:
            by_doc.setdefault(int(s["doc_id"]), []).append(s)
        for doc_id in sorted(by_doc):
            r = _record(log, spec, doc_id, by_doc[doc_id], tokenizer)
            records.append(r)
            first = by_doc[doc_id][0]
            hashes[(task, r.item_id)] = (str(first["doc_hash"]), str(first["prompt_hash"]), str(first["target_hash"]))
    return records, hashes


def _record(log: LmEvalLog, spec: TaskSpec, doc_id: int, group: list[Sample], tokenizer: Any) -> Record:
    """One item's ``Record``, made as ``runner.records_of`` makes it from a live run."""
    metrics = item_metrics(group)
    key = gate_key(spec, group, metrics)
    name, _, filt = key.partition(",")
    s = next((x for x in group if x.get("filter", "none") == filt), group[0])
    doc = s["doc"]
    args = s["arguments"]
    args = list(args.values()) if isinstance(args, dict) else list(args)
    ctx, gen_kwargs = _args(args[0])
    base: dict[str, Any] = {
        "task": spec.name, "item_id": str(doc.get("id", doc_id)) if isinstance(doc, dict) else str(doc_id),
        "item_hash": item_hash(doc), "prompt_hash": _text_hash(str(ctx)), "prompt": str(ctx),
        "target": str(s.get("target", "")), "score": metrics[key], "metric": name if filt == "none" else key,
        "metrics": metrics,
    }  # fmt: skip
    filtered = s.get("filtered_resps")
    if isinstance(filtered, list) and filtered and isinstance(filtered[0], list | tuple):
        conts = [str(_args(a)[1]) for a in args]
        lls = [float(x[0]) for x in filtered]
        best = conts[max(range(len(lls)), key=lambda i: lls[i])]
        label = str(base["target"])
        if label.isdigit() and int(label) < len(conts):  # lm-eval logs the gold choice's index
            base["target"] = conts[int(label)]
        return Record(**base, output=best, answer=best, kind="multiple_choice")
    if tokenizer is None:
        raise LogError(f"task {spec.name} generates: give --tokenizer to count its responses' tokens")
    output = _response(s)
    ids = tuple(tokenizer(output, add_special_tokens=False).input_ids)
    limit = _max_gen_toks(log, spec.name, gen_kwargs)
    answer = filtered[0] if isinstance(filtered, list) and filtered else filtered
    return Record(
        **base, output=output, answer=str(answer), kind="generate_until",
        finish="length" if len(ids) >= limit else "stop", n_tokens=len(ids), token_ids=ids,
    )  # fmt: skip


# -- sides and their alignment --------------------------------------------------------


@dataclass(frozen=True)
class Side:
    """One side of a comparison: its records (read from a log or run here), where they came
    from, its tasks' versions and, for a log, lm-eval's (doc, prompt, target) hash per item."""

    label: str  # "base" | "candidate"
    run: RunResult
    source: RunSource
    versions: Mapping[str, Any]
    hashes: Mapping[Key, tuple[str, str, str]]

    def tasks(self) -> list[str]:
        return list(dict.fromkeys(r.task for r in self.run.records))

    def keep(self, keys: set[Key]) -> Side:
        kept = tuple(r for r in self.run.records if (r.task, r.item_id) in keys)
        return replace(self, run=replace(self.run, records=kept))


def _identity(side: Side, r: Record, both_logs: bool) -> tuple[str, str, str]:
    """(doc, prompt, target) hashes: lm-eval's where both sides are logs, else regress's own
    (the same content, hashed as a run here hashes it)."""
    if both_logs:
        return side.hashes[(r.task, r.item_id)]
    return r.item_hash, r.prompt_hash, _text_hash(r.target)


def _one_sided(base: Side, cand: Side, common: list[str]) -> tuple[list[str], set[Key]]:
    """Warnings naming the tasks and items present on one side only, and the keys on both."""
    out = []
    for side, other in ((base, cand), (cand, base)):
        only = [t for t in side.tasks() if t not in other.tasks()]
        if only:
            out.append(f"task(s) only in the {side.label} ({side.source.path}), left out: {', '.join(only)}")
    b = {(r.task, r.item_id) for r in base.run.records if r.task in common}
    c = {(r.task, r.item_id) for r in cand.run.records if r.task in common}
    for task in common:
        nb, nc = sum(k[0] == task for k in b - c), sum(k[0] == task for k in c - b)
        if nb or nc:
            out.append(f"task {task}: {nb} item(s) only in the base, {nc} only in the candidate (another --limit?): "
                       "left out")  # fmt: skip
    return out, b & c


def align(base: Side, cand: Side, allow_prompt_change: bool) -> tuple[Side, Side, list[str]]:
    """Both sides cut to the items they share, checked to be the same items with the same
    targets (and prompts, unless ``allow_prompt_change``); the warnings say what was left out."""
    tb, tc = base.tasks(), cand.tasks()
    common = [t for t in tb if t in tc]
    if not common:
        raise LogError(f"base and candidate share no task (base {base.source.path}: {', '.join(tb)}; "
                       f"candidate {cand.source.path}: {', '.join(tc)})")  # fmt: skip
    warnings, keys = _one_sided(base, cand, common)
    for t in common:
        vb, vc = base.versions.get(t), cand.versions.get(t)
        if vb is not None and vc is not None and str(vb) != str(vc):
            warnings.append(f"task {t}: version {vb} in the base, {vc} in the candidate")
    both_logs = bool(base.hashes) and bool(cand.hashes)
    rc = {(r.task, r.item_id): r for r in cand.run.records}
    pairs = [(r, rc[(r.task, r.item_id)]) for r in base.run.records if (r.task, r.item_id) in keys]
    ids = [(_identity(base, b, both_logs), _identity(cand, c, both_logs)) for b, c in pairs]
    for (b, _), (ib, ic) in zip(pairs, ids):
        for i, what in ((0, "document (doc_hash)"), (2, "target (target_hash)")):
            if ib[i] != ic[i]:
                raise LogError(f"{b.task}/{b.item_id}: the {what} differs between base and candidate "
                               f"({ib[i]} vs {ic[i]}): not the same items, nothing compared")  # fmt: skip
    moved = [b for (b, _), (ib, ic) in zip(pairs, ids) if ib[1] != ic[1]]
    if moved and not allow_prompt_change:
        first = moved[0]
        raise LogError(f"{first.task}/{first.item_id}: the prompt differs between base and candidate "
                       f"({len(moved)} of {len(pairs)} items; another template, few-shot draw or chat template on "
                       "one side?); --allow-prompt-change compares them anyway")  # fmt: skip
    if moved:
        warnings.append(f"prompts differ on {len(moved)} of {len(pairs)} items (first {moved[0].task}/"
                        f"{moved[0].item_id}); compared anyway (--allow-prompt-change)")  # fmt: skip
    return base.keep(keys), cand.keep(keys), warnings


# -- the sides of a run ---------------------------------------------------------------


def log_side(label: str, log: LmEvalLog, tokenizer: Any, tokenizer_name: str | None) -> Side:
    records, hashes = log_records(log, tokenizer)
    generates = any(r.kind == "generate_until" for r in records)
    run = RunResult(Checkpoint(log.folder, log.fingerprint), tuple(records), log.results_file, True, 0)
    return Side(label, run, log.source(tokenizer_name if generates else None), dict(log.versions), hashes)


def live_side(label: str, ck: LoadedCheckpoint, suite: Suite, cfg: RunConfig) -> Side:
    from harness.runner import evaluate
    from harness.store import lm_eval_version

    run = evaluate(ck, suite, cfg)
    versions = {t.name: ((t.config or {}).get("metadata") or {}).get("version") for t in suite.tasks}
    source = RunSource("checkpoint", ck.path, lm_eval_version=lm_eval_version(), model=f"regress ({cfg.backend})",
                       limit=cfg.limit)  # fmt: skip
    return Side(label, run, source, versions, {})


def logs_suite(logs: Sequence[LmEvalLog]) -> Suite:
    """The suite of a comparison of logs only: their tasks, each with its config and group."""
    specs: dict[str, TaskSpec] = {}
    for log in logs:
        for t in log.tasks:
            specs.setdefault(t, task_spec(log, t))
    ident = json.dumps([[log.results.get("task_hashes"), log.versions] for log in logs], sort_keys=True, default=str)
    chat = any(log.results.get("chat_template") for log in logs)
    return Suite("lm-eval", logs[0].folder, "1", tuple(specs.values()), chat,
                 hashlib.sha256(ident.encode()).hexdigest()[:16], probes={"drift": False})  # fmt: skip


def live_config(cfg: RunConfig, log: LmEvalLog) -> RunConfig:
    """What a checkpoint beside a log runs: the log's tasks (its groups by name, as regress
    groups them) unless --tasks says, and the log's limit unless --limit says."""
    tasks = cfg.tasks or ",".join(dict.fromkeys(log.groups.get(t, t) for t in log.tasks))
    limit = cfg.limit
    if limit is None and log.limit is not None and log.limit >= 1 and log.limit == int(log.limit):
        limit = int(log.limit)
    return replace(cfg, tasks=tasks, limit=limit)


def tokenizer_for(
    given: str | None, loaded: Sequence[LoadedCheckpoint], logs: Sequence[LmEvalLog], trust_remote_code: bool
) -> tuple[Any, str | None]:
    """The tokenizer that counts a log's response tokens: --tokenizer, else a checkpoint's
    run beside it, else the log's own model folder where it is local; (None, None) if none."""
    from harness.checkpoint import load_tokenizer

    if given:
        return load_tokenizer(given, trust_remote_code), given
    if loaded:
        return loaded[0].tokenizer, loaded[0].path
    for log in logs:
        path = log.model_path()
        if path:
            return load_tokenizer(path, trust_remote_code), path
    return None, None


def load_sides(
    specs: Sequence[tuple[str, bool]], cfg: RunConfig, out: str | None, tokenizer: str | None
) -> tuple[list[Side], Suite, Path]:
    """Each (path, is a log) as a side, the first the base; the suite compared; the output
    folder. Every log is read and checked, and every checkpoint checked, before anything runs
    or is written; a checkpoint beside a log runs the log's tasks and limit, without probes."""
    from harness.pipeline import default_out, preflight
    from harness.store import check_writable
    from harness.suites import suite_for

    logs = {p: read_log(p) for p, is_log in specs if is_log}
    live = [p for p, is_log in specs if not is_log]
    if live:
        cfg = live_config(cfg, next(iter(logs.values())))
        suite = replace(suite_for(cfg), probes={"drift": False})
    else:
        suite = logs_suite(list(logs.values()))
    path = Path(out) if out else default_out(specs[0][0], specs[-1][0], suite.name)
    loaded = dict(zip(live, preflight(live, suite, cfg, path))) if live else {}
    check_writable(path, "output folder")
    tok, tok_name = tokenizer_for(tokenizer, list(loaded.values()), list(logs.values()), cfg.options.trust_remote_code)
    labels = ["base", *["candidate"] * (len(specs) - 1)]
    made = {p: log_side(lb, logs[p], tok, tok_name) for (p, is_log), lb in zip(specs, labels) if is_log}
    made.update({p: live_side(lb, loaded[p], suite, cfg) for (p, is_log), lb in zip(specs, labels) if not is_log})
    return [made[p] for p, _ in specs], suite, path


# -- the commands ---------------------------------------------------------------------


@dataclass(frozen=True)
class LogCompareRequest:
    """``regress compare`` with an lm-eval output folder on one side or both."""

    base: str
    model: str
    base_is_log: bool
    model_is_log: bool
    config: RunConfig
    out: str | None = None
    policy_file: str | None = None
    tokenizer: str | None = None
    allow_prompt_change: bool = False


def _notes(sides: Sequence[Side]) -> list[str]:
    out = []
    for s in sides:
        src = s.source
        if src.kind == "lm-eval log":
            what = f"lm-eval {src.lm_eval_version or '?'}; {src.model or '?'} {src.model_args or ''}; limit {src.limit}"
            out.append(f"{s.label}: lm-eval log {src.path} ({what}; tokens counted with {src.tokenizer or '-'})")
    out.append(f"judged from lm-eval logs: {ON_LOGS}; not run, they need both checkpoints run here: {NEED_LIVE}")
    return out


def compare_sides(
    base: Side, cand: Side, suite: Suite, backend: str, policy: Any, allow_prompt_change: bool
) -> Comparison:
    """Align the two sides, then the usual stages (pair, tables, detectors, gate)."""
    from harness.pipeline import comparison_of

    b, c, warnings = align(base, cand, allow_prompt_change)
    kinds = {s.source.kind for s in (b, c)}
    label = "lm-eval log" if kinds == {"lm-eval log"} else f"{backend} and lm-eval log"
    cmp = comparison_of(b.run, c.run, suite, label, policy)
    return replace(
        cmp, warnings=(*warnings, *_notes((b, c)), *cmp.warnings), sources={"base": b.source, "candidate": c.source}
    )


def compare(req: LogCompareRequest) -> tuple[Comparison, Path]:
    """``regress compare --base-samples/--model-samples``: compared, judged and reported."""
    from harness.pipeline import build_policy
    from harness.report import write_report

    specs = [(req.base, req.base_is_log), (req.model, req.model_is_log)]
    (base, cand), suite, out = load_sides(specs, req.config, req.out, req.tokenizer)
    policy = build_policy(suite, req.policy_file)
    cmp = compare_sides(base, cand, suite, req.config.backend, policy, req.allow_prompt_change)
    return cmp, write_report(cmp, out)


def trend(
    base: str, checkpoints: Sequence[str], cfg: RunConfig, out: Path, policy_file: str | None, tokenizer: str | None
) -> list[Any]:
    """``regress trend`` where the base or a checkpoint is an lm-eval output folder."""
    from harness.pipeline import build_policy
    from harness.trend import points_of, write_trend

    specs = [(p, is_log_folder(p)) for p in (base, *checkpoints)]
    sides, suite, _ = load_sides(specs, cfg, str(out), tokenizer)
    policy = build_policy(suite, policy_file)
    comparisons = [compare_sides(sides[0], s, suite, cfg.backend, policy, False) for s in sides[1:]]
    points, by_step = points_of(list(checkpoints), comparisons)
    write_trend(base, points, out, "step" if by_step else "position given")
    return points
