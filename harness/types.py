"""Records that flow through the pipeline, all frozen, in one place.

    suite -> requests -> backend -> records -> compare -> detectors -> gate -> report

Each stage returns new values and never mutates one it was given:

* ``Suite`` / ``TaskSpec``: what to run (``suites.load_suite``).
* ``LoadedCheckpoint``: a validated checkpoint, fingerprinted, with its tokenizer and its
  end-of-turn setup (``EotSetup``), made once per checkpoint per run (``pipeline``).
* ``GenRequest`` / ``LoglikRequest``: what the lm-eval adapter hands a backend, each
  served for lm-eval's request identity ``RequestId`` (task, doc_id, idx).
* ``Generation`` / ``Loglik``: what a backend answers, with what lm-eval throws away
  (full text, generated token ids, finish reason).
* ``Record``: one row per (checkpoint, task, item), written to the store; ``RunResult``:
  one checkpoint's records and probe values (``runner.evaluate``).
* The item table (a pandas frame, columns ``compare.item_columns()``), ``TaskRow`` per task
  and overall, ``ProbeRow`` for the termination probe (``compare``).
* ``RuleOutcome`` and ``Verdict`` (``gate.judge``; the policy's ``Thresholds`` and ``Policy``
  are derived from the rule registry, ``harness.registry``).
* ``Comparison``: everything a report needs (``report.write_report``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import pandas as pd

    from harness.registry import Policy

# A JSON object as regress writes it to disk (summary.json, records.jsonl, the report's data):
# what every ``to_dict`` returns. Values are ``object``, not ``Any``: a reader narrows them.
JsonObject = dict[str, object]

FinishReason = Literal["eos", "stop", "length"]
FINISH_REASONS: tuple[str, ...] = ("eos", "stop", "length")
LEVELS = ("PASS", "WARN", "FAIL")


# -- what to run ------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskSpec:
    """One task of a suite: its name, and its lm-eval config dict (None if registered)."""

    name: str
    config: dict[str, Any] | None
    source: str  # file path or "lm-eval registry"
    # The lm-eval group the suite named that this task was expanded from ("mmlu"), if any.
    group: str | None = None
    # The metric that gates, as "metric,filter" the way lm-eval names it ("exact_match,strict-match");
    # None: the first metric of the task's first filter.
    gate_metric: str | None = None
    # How faithful a local copy of the data is ("approximate", "subset"); "" for the real thing.
    fidelity: str = ""

    @property
    def output_type(self) -> str:
        return (self.config or {}).get("output_type", "generate_until")


@dataclass(frozen=True)
class Suite:
    """A named set of lm-eval tasks, probes and a gate policy (``suites/NAME.yaml``)."""

    name: str
    path: str
    version: str
    tasks: tuple[TaskSpec, ...]
    chat_template: bool
    content_hash: str
    policy: Mapping[str, Any] = field(default_factory=dict)  # raw, parsed by gate.parse_policy
    probes: Mapping[str, Any] = field(default_factory=dict)  # raw: drift on/off, termination probe spec

    def task(self, name: str) -> TaskSpec:
        for t in self.tasks:
            if t.name == name:
                return t
        from harness.errors import SuiteError

        raise SuiteError(f"suite {self.name!r} has no task {name!r}")


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint as the report names it: its path and content fingerprint; for a PEFT
    adapter the folder of the model it is applied to (``adapter_of``); for a hub id the id,
    the revision asked for and the commit the cache resolved it to."""

    path: str
    fingerprint: str
    adapter_of: str | None = None
    hub_id: str | None = None
    revision: str | None = None
    commit: str | None = None

    def to_dict(self) -> JsonObject:
        """Path and fingerprint; the adapter and hub fields only where set."""
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Checkpoint:
        opt = {k: str(d[k]) for k in ("adapter_of", "hub_id", "revision", "commit") if d.get(k) is not None}
        return cls(str(d["path"]), str(d["fingerprint"]), **opt)


@dataclass(frozen=True)
class Adapter:
    """A PEFT LoRA adapter folder (``adapter_config.json`` + weights, no ``config.json``)
    and the full checkpoint folder it is applied to (``base``); ``name`` is how engines
    and servers call it (the folder's name)."""

    path: str
    base: str
    name: str
    rank: int
    alpha: float
    target_modules: tuple[str, ...]
    weights: str  # the weight file's name in ``path``


@dataclass(frozen=True)
class EotSetup:
    """How a checkpoint ends an assistant turn: the token its chat template writes after an
    assistant message, generation_config's eos ids and the tokenizer's eos.

    ``stop_ids`` (generation_config's ids, then the tokenizer's eos) is the one list of
    end-of-turn ids every backend stops on and the drift probe scores.
    """

    template_turn_end: str | None
    template_turn_end_id: int | None
    generation_eos_ids: tuple[int, ...]
    tokenizer_eos_id: int | None

    @property
    def stop_ids(self) -> tuple[int, ...]:
        ids = list(self.generation_eos_ids)
        if self.tokenizer_eos_id is not None and self.tokenizer_eos_id not in ids:
            ids.append(self.tokenizer_eos_id)
        return tuple(ids)


@dataclass(frozen=True)
class LoadedCheckpoint:
    """A checkpoint validated and read once per run: what every later stage needs of it.

    ``path`` is resolved; ``files`` maps each fingerprinted file to its hash;
    ``tokenizer`` is the checkpoint's own (transformers) tokenizer, loaded once and shared
    by the store key, the backends and the probes; ``eot`` its end-of-turn setup.
    """

    path: str
    fingerprint: str
    files: Mapping[str, str]
    tokenizer: Any
    eot: EotSetup
    adapter: Adapter | None = None  # a PEFT adapter: ``path`` is its folder, ``adapter.base`` the model's
    named: Checkpoint | None = None  # how the report names it, where that is more than path and fingerprint

    @property
    def checkpoint(self) -> Checkpoint:
        return self.named or Checkpoint(self.path, self.fingerprint)

    @property
    def model_path(self) -> str:
        """The full checkpoint folder an engine loads (the adapter's base for an adapter)."""
        return self.adapter.base if self.adapter is not None else self.path

    @property
    def eot_texts(self) -> tuple[str, ...]:
        return tuple(self.tokenizer.decode([i], skip_special_tokens=False) for i in self.eot.stop_ids)


# -- backend requests and answers ---------------------------------------------------------


def ids_to_json(ids: Sequence[int]) -> list[int]:
    """Token ids as stored (a JSON list); the one place ids become a list."""
    return list(ids)


def ids_from_json(value: Iterable[int] | None) -> tuple[int, ...]:
    """Token ids as a record holds them (a tuple) from a stored list, or none; the one place
    ids become a tuple."""
    return tuple(value or ())


@dataclass(frozen=True, order=True)
class RequestId:
    """lm-eval's own identity of one request (its ``Instance``): the task, the document's
    index in the task's split (``doc_id``, as lm-eval's samples log it) and the request's
    index among the document's (``idx``: a multiple-choice item's choice, in order)."""

    task: str
    doc_id: int
    idx: int


@dataclass(frozen=True)
class GenRequest:
    """One greedy generation: a fully templated prompt, its stop strings and token budget."""

    prompt: str
    stop: tuple[str, ...] = ()
    max_tokens: int = 64


@dataclass(frozen=True)
class Generation:
    """A backend's answer to a ``GenRequest``.

    ``text`` is the generated text cut before the first stop string (what lm-eval scores);
    ``finish`` is ``eos`` (an end-of-turn/eos token), ``stop`` (a stop string) or ``length``
    (ran to ``max_tokens``); ``stop_reason`` is the token id or string that stopped it.
    ``token_ids`` are the generated ids (eos excluded) for the token-level detectors.
    """

    text: str
    n_tokens: int
    finish: str
    stop_reason: str | None = None
    token_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.finish not in FINISH_REASONS:
            raise ValueError(f"finish reason must be one of {FINISH_REASONS}, got {self.finish!r}")

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "token_ids": ids_to_json(self.token_ids)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Generation:
        return cls(**{**d, "token_ids": ids_from_json(d.get("token_ids"))})


@dataclass(frozen=True)
class LoglikRequest:
    """Log-probability of ``continuation`` after ``context`` (both text, context templated)."""

    context: str
    continuation: str


@dataclass(frozen=True)
class Loglik:
    """Sum of log-probs of the continuation's tokens, whether greedy decoding yields it,
    and how many tokens it has (for per-token means)."""

    logprob: float
    is_greedy: bool
    n_tokens: int

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Loglik:
        return cls(**d)


# -- records --------------------------------------------------------------------------


@dataclass(frozen=True)
class Record:
    """One (checkpoint, task, item) result, as stored.

    ``item_hash`` is a hash of the item's content (the lm-eval doc), ``prompt_hash`` of the
    exact prompt text the backend saw; compare refuses to pair rows whose hashes differ.
    ``output`` is the raw generation (for multiple choice: the chosen choice), ``answer``
    the extracted answer that lm-eval's filters kept, ``score`` the task's primary metric.
    ``finish``/``n_tokens``/``token_ids`` are empty for multiple-choice items.
    """

    task: str
    item_id: str
    item_hash: str
    prompt_hash: str
    prompt: str
    target: str
    output: str
    answer: str
    score: float
    metric: str
    kind: str  # "generate_until" | "multiple_choice"
    finish: str | None = None
    stop_reason: str | None = None
    n_tokens: int = 0
    token_ids: tuple[int, ...] = ()
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def correct(self) -> bool:
        return bool(is_correct(self.score))

    def to_dict(self) -> JsonObject:
        d = asdict(self)
        d["token_ids"] = ids_to_json(self.token_ids)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Record:
        d = dict(d)
        d["token_ids"] = ids_from_json(d.get("token_ids"))
        d["metrics"] = dict(d.get("metrics") or {})
        return cls(**d)


Messages = list[dict[str, str]]  # a chat: [{"role": ..., "content": ...}, ...]
# What a backend keys the store with: its answer-moving settings, JSON scalars (``output_settings``).
StoreSettings = dict[str, str | int | float | bool | None]

# (task, item_id) -> (log P(end-of-turn) after the reference answer, mean log-prob per token of it)
DriftValues = Mapping[tuple[str, str], tuple[float, float]]


@dataclass(frozen=True)
class RunResult:
    """One checkpoint's records on a suite, and its probe values.

    ``drift`` scores the reference's answers (the base's; for the base itself its own);
    ``termination`` is the termination probe's generations; ``reused``: every record came
    from the store, no engine was started.
    """

    checkpoint: Checkpoint
    records: tuple[Record, ...]
    store_path: str
    reused: bool
    backend_calls: int
    drift: DriftValues = field(default_factory=dict)
    termination: tuple[Generation, ...] = ()
    eot: EotSetup | None = None
    backend_requests: int = 0  # requests the backend answered this time (0: all from the store)
    drafting: DraftCounts | None = None  # a candidate drafted from the base's stored answers


@dataclass(frozen=True)
class RunSource:
    """Where one side of a comparison came from: a checkpoint regress ran (``kind``
    "checkpoint") or an lm-eval output folder read as it is (``kind`` "lm-eval log": its
    results file, lm-eval version, model and model args, the limit it ran with, each task's
    generation settings, and the tokenizer that counted its responses' tokens)."""

    kind: str
    path: str
    results_file: str | None = None
    lm_eval_version: str | None = None
    model: str | None = None
    model_args: str | None = None
    limit: float | None = None
    generation: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    tokenizer: str | None = None

    def to_dict(self) -> JsonObject:
        return {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in asdict(self).items() if v not in (None, {})}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RunSource:
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


# -- comparison -----------------------------------------------------------------------


def _json_number(x: Any) -> Any:
    return None if isinstance(x, float) and not math.isfinite(x) else x


CORRECT_AT = 0.5  # an item is right when its gate-metric score is at least this (0/1 metrics: 1)


def is_correct(score: Any) -> Any:
    """Whether a score counts as right: one place for a float, an array or a column."""
    return score >= CORRECT_AT


@dataclass(frozen=True)
class DetectorRate:
    """One registered detector's rates on a row (``harness.registry``): the share of the ``n``
    items of its kinds it flags for the base and for the candidate."""

    name: str
    base: float
    candidate: float
    n: int


@dataclass(frozen=True)
class TaskRow:
    """The paired measures of one task (or of all items: ``Comparison.overall``).

    Accuracies with Wilson 95% intervals (``_lo``/``_hi``), the paired delta with Newcombe's
    interval, flips (counts, and rates with intervals), the exact two-sided McNemar p (and
    Holm-adjusted across the suite's tasks), the drop detectable with 80% power, output
    identity and answer change, the generated-length ratio, the drift means (None where no
    drift was measured; ``stop_drift_n`` None where the items carry no drift at all), and one
    ``DetectorRate`` per registered detector (``rates``; in summary.json
    ``<name>_rate_base``/``<name>_rate_candidate``, and ``<name>_n`` where its items are not
    the generated ones).
    """

    name: str
    n: int
    acc_base: float
    acc_base_lo: float
    acc_base_hi: float
    acc_candidate: float
    acc_candidate_lo: float
    acc_candidate_hi: float
    delta: float
    delta_lo: float
    delta_hi: float
    negative_flips: int
    positive_flips: int
    nfr: float
    nfr_lo: float
    nfr_hi: float
    pfr: float
    pfr_lo: float
    pfr_hi: float
    mcnemar_p: float
    mcnemar_p_holm: float
    mdd: float
    identical_outputs: int
    identity_rate: float
    answer_change_rate: float
    n_generated: int
    length_ratio: float
    stop_drift_mean: float | None = None
    stop_drift_n: int | None = None
    answer_drift_mean: float | None = None
    answer_drift_n: int | None = None
    rates: tuple[DetectorRate, ...] = ()
    # Groups (lm-eval's mmlu, bbh_zeroshot): a subtask's row names its group; a group's row
    # (``Comparison.groups``, over the pooled items of its subtasks) names its subtasks.
    group: str | None = None
    subtasks: tuple[str, ...] = ()
    # The metric that gates ("exact_match,flexible-extract"); set only where a suite's items
    # carry several metrics or name a gate metric, so there is a choice to name.
    metric: str | None = None
    # Negative flips by kind of cause (harness.causes): ``knowledge lost``, and the losses of
    # form or stop (empty, cut short, runaway, unparsed, format, knowledge kept, not produced).
    knowledge_lost: int = 0
    format_lost: int = 0

    def rate(self, name: str) -> DetectorRate | None:
        return next((r for r in self.rates if r.name == name), None)

    def to_dict(self) -> JsonObject:
        """The row as summary.json writes it (drift keys only where drift was measured;
        group, subtasks and metric only where set; detector rates flattened)."""
        d = {k: _json_number(getattr(self, k)) for k in _TASK_FIELDS}
        for col in ("stop_drift", "answer_drift"):
            if d[f"{col}_n"] is None:
                del d[f"{col}_mean"], d[f"{col}_n"]
        for key in ("group", "subtasks", "metric"):
            if not d[key]:
                del d[key]
        if "subtasks" in d:
            d["subtasks"] = list(d["subtasks"])
        for r in self.rates:
            d[f"{r.name}_rate_base"], d[f"{r.name}_rate_candidate"] = _json_number(r.base), _json_number(r.candidate)
            if r.n != self.n_generated:
                d[f"{r.name}_n"] = r.n
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TaskRow:
        """The row ``to_dict`` wrote (a null number reads back as NaN, or inf for the length ratio)."""
        known = {k: d[k] for k in _TASK_FIELDS if k in d}
        for k in _FLOAT_FIELDS:
            if k in known and known[k] is None and k not in ("stop_drift_mean", "answer_drift_mean"):
                known[k] = math.inf if k == "length_ratio" else math.nan
        names = [k[: -len("_rate_base")] for k in d if k.endswith("_rate_base")]
        names = [n for n in names if f"{n}_rate_candidate" in d]
        rates = tuple(
            DetectorRate(n, _float(d[f"{n}_rate_base"]), _float(d[f"{n}_rate_candidate"]),
                         int(d.get(f"{n}_n", d["n_generated"])))
            for n in names
        )  # fmt: skip
        return cls(**{**known, "subtasks": tuple(known.get("subtasks") or ()), "rates": rates})


def _float(x: Any) -> float:
    return math.nan if x is None else float(x)


_TASK_FIELDS = tuple(f.name for f in fields(TaskRow) if f.name != "rates")
_FLOAT_FIELDS = tuple(f.name for f in fields(TaskRow) if f.type in ("float", "float | None"))


def gated_units(tasks: Sequence[TaskRow], groups: Sequence[TaskRow]) -> tuple[TaskRow, ...]:
    """The gated rows in suite order: each standalone task, and each group where its first
    subtask stands (its subtasks folded under it); a group none of whose subtasks is among
    ``tasks`` comes last. Without groups: ``tasks``. The one definition of the order the gate
    judges, Holm counts and the reports show."""
    by_name = {g.name: g for g in groups}
    out: list[TaskRow] = []
    placed: set[str] = set()
    for t in tasks:
        if t.group is None or t.group not in by_name:
            out.append(t)
        elif t.group not in placed:
            placed.add(t.group)
            out.append(by_name[t.group])
    return (*out, *(g for g in groups if g.name not in placed))


@dataclass(frozen=True)
class TerminationStats:
    """One checkpoint's termination-probe generations, summarised."""

    n: int
    stop_rate: float
    nonterm_rate: float
    loop_rate: float
    length_p50: float
    length_p90: float
    length_max: float
    lengths: tuple[int, ...]


@dataclass(frozen=True)
class ProbeExample:
    """A candidate's probe generation that ran to the token limit (text cut at 2,000 chars)."""

    output: str
    finish: str
    n_tokens: int


@dataclass(frozen=True)
class ProbeRow:
    """The termination probe as the gate sees it: non-termination and loop rates of the
    base and the candidate (the probe has no accuracy, so only the rise rules apply)."""

    name: str
    n: int
    n_generated: int
    nonterm_rate_base: float
    nonterm_rate_candidate: float
    loop_rate_base: float
    loop_rate_candidate: float
    base: TerminationStats
    candidate: TerminationStats
    examples: tuple[ProbeExample, ...] = ()

    def rate(self, name: str) -> DetectorRate | None:
        """The probe measures two detectors' rates: ``nonterm`` and ``loop``."""
        if name == "nonterm":
            return DetectorRate(name, self.nonterm_rate_base, self.nonterm_rate_candidate, self.n_generated)
        if name == "loop":
            return DetectorRate(name, self.loop_rate_base, self.loop_rate_candidate, self.n_generated)
        return None

    def to_dict(self) -> JsonObject:
        return {**asdict(self), "probe": True}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ProbeRow:
        def stats(s: Mapping[str, Any]) -> TerminationStats:
            return TerminationStats(**{**s, "lengths": tuple(s.get("lengths") or ())})

        return cls(
            name=d["name"], n=d["n"], n_generated=d["n_generated"],
            nonterm_rate_base=d["nonterm_rate_base"], nonterm_rate_candidate=d["nonterm_rate_candidate"],
            loop_rate_base=d["loop_rate_base"], loop_rate_candidate=d["loop_rate_candidate"],
            base=stats(d["base"]), candidate=stats(d["candidate"]),
            examples=tuple(ProbeExample(**e) for e in d.get("examples") or ()),
        )  # fmt: skip


@dataclass(frozen=True)
class NoiseFloor:
    """The base evaluated twice (``--noise-floor``): how many of its outputs changed.
    ``batch_sizes`` None: the engine batches as it schedules (vLLM, servers)."""

    changed: int
    n: int
    rate: float
    batch_sizes: tuple[int, int] | None
    bitwise_repeatable: bool

    def to_dict(self) -> JsonObject:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> NoiseFloor:
        sizes = d.get("batch_sizes")
        pair = (int(sizes[0]), int(sizes[1])) if sizes else None
        return cls(int(d["changed"]), int(d["n"]), float(d["rate"]), pair, bool(d["bitwise_repeatable"]))

    def note(self) -> str:
        how = (
            f"(batch sizes {self.batch_sizes[0]} and {self.batch_sizes[1]}, reversed order)"
            if self.batch_sizes
            else "(requests in reversed order)"
        )
        tail = (
            "; the engine is bitwise repeatable here, the floor is zero"
            if self.bitwise_repeatable
            else f"; flips within {100 * self.rate:.2f}% of items are treated as noise"
        )
        return f"noise floor: {self.changed} of {self.n} base outputs changed between two runs of the base {how}{tail}"


# -- gate -----------------------------------------------------------------------------


@dataclass(frozen=True)
class RuleOutcome:
    """One rule on one gated row: whether it fired, the measured value, its limit, the numbers."""

    rule: str
    task: str
    severity: str
    fired: bool
    value: float | None
    threshold: float | None
    message: str
    p_value: float | None = None

    def to_dict(self) -> JsonObject:
        return {k: _json_number(v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RuleOutcome:
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})


@dataclass(frozen=True)
class Verdict:
    """PASS / WARN / FAIL, one reason per rule that fired, and every rule's outcome."""

    level: str
    reasons: tuple[str, ...]
    results: tuple[RuleOutcome, ...]

    def exit_code(self, strict: bool = False) -> int:
        if self.level == "FAIL" or (strict and self.level == "WARN"):
            return 1
        return 0


@dataclass(frozen=True)
class Comparison:
    """Everything a report needs: both checkpoints, the item table, the task rows, the
    group rows and the overall row, the probe row, the verdict and the policy it was reached under, the
    config findings, the noise floor when measured, and the detector's settings."""

    base: Checkpoint
    candidate: Checkpoint
    suite: str
    suite_hash: str
    backend: str
    items: pd.DataFrame
    tasks: tuple[TaskRow, ...]
    overall: TaskRow
    verdict: Verdict
    policy: Policy
    warnings: tuple[str, ...] = ()
    config_check: tuple[str, ...] = ()
    termination: ProbeRow | None = None
    noise_floor: NoiseFloor | None = None
    detector: Mapping[str, Any] | None = None
    # One row per group of the suite over its subtasks' pooled items (subtask rows stay in
    # ``tasks``, each naming its group); empty for a suite without groups.
    groups: tuple[TaskRow, ...] = ()
    # Where each side came from ("base", "candidate" -> RunSource); set where a side is an
    # lm-eval output folder (``harness.lm_eval_logs``), empty when both were run here.
    sources: Mapping[str, RunSource] = field(default_factory=dict)
    drafting: DraftCounts | None = None  # how the candidate's generations were made (harness.drafts)

    @property
    def units(self) -> tuple[TaskRow, ...]:
        """The gated rows in suite order (``gated_units``)."""
        return gated_units(self.tasks, self.groups)


@dataclass(frozen=True)
class DraftCounts:
    """How a candidate's generations were made with drafting (``harness.drafts``), and the
    generation steps it saved."""

    drafted: int = 0
    resumed: int = 0
    generated: int = 0
    tokens_saved: int = 0
    disagreed: int = 0  # --verify-drafts: drafted or resumed answers full generation contradicts
    verified: int = 0  # --verify-drafts: drafted or resumed answers checked against full generation

    def __add__(self, o: DraftCounts) -> DraftCounts:
        return DraftCounts(*(a + b for a, b in zip(self.astuple(), o.astuple())))

    def astuple(self) -> tuple[int, int, int, int, int, int]:
        return (self.drafted, self.resumed, self.generated, self.tokens_saved, self.disagreed, self.verified)

    def line(self) -> str:
        s = f"{self.drafted} drafted, {self.resumed} resumed, {self.generated} generated"
        s += f", {self.tokens_saved:,} tokens saved"
        return s + (f"; {self.disagreed} of {self.verified} differ from full generation" if self.verified else "")
