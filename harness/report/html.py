"""``report.html``: one self-contained page (no network), rendered with Jinja2 autoescape.

    html = render_html(cmp)

The page holds a verdict banner with the rules that fired, a per-task table (a group as one
row of its pooled measures, its subtasks folded under it in a ``<details>``, open when one of
them is flagged; a metric column where the suite has a choice of gating metrics), the plots of
``plots`` as PNG data URIs, and a flip explorer: every negative flip plus seeded samples
of positive flips and other changed answers, with both outputs side by side and the
point where they diverge marked. Its script and stylesheet (``explorer.js``,
``report.css``) are inlined, and a Content-Security-Policy allows exactly those two by
hash, so nothing else on the page can run or load.

Model outputs are untrusted. Server-side text only reaches the page through autoescaped
template variables; the explorer's items travel as JSON in a
``<script type="application/json">`` block with ``<``, ``>``, ``&``, U+2028 and U+2029
escaped (no output can close the tag), and the script builds the DOM with
``textContent`` only. Control characters, bidi overrides, lone surrogates and
noncharacters show as labelled chips (NUL, ESC, U+202E), and long texts are cut to a display
budget (the cut is stated on the page; ``items.parquet`` keeps every output whole), so a
10,000-item report stays a few MB.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from functools import cache
from importlib import resources
from typing import Any

import numpy as np
import pandas as pd
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from markupsafe import Markup

from harness import __version__, detectors, registry
from harness.compare import BASE_COLUMNS
from harness.report import plots
from harness.report.summary import SCHEMA_VERSION
from harness.text import pct, pts
from harness.types import CORRECT_AT, Comparison, JsonObject, RuleOutcome, TaskRow

MAX_SAMPLE = 300  # positive flips and other changed answers shown (seeded samples)
DATA_BUDGET = 3_500_000  # bytes of explorer JSON; the rest of the page is ~0.5 MB
SEED = 0
# Display caps in characters, (prompt, target, output), tried largest first until the
# explorer's data fits DATA_BUDGET.
CAP_LEVELS = ((2000, 400, 4000), (1000, 300, 2000), (600, 200, 1000), (300, 120, 500), (160, 80, 240))
_ID_CAP, _ANSWER_CAP, _UNIT_CAP = 200, 200, 120


def degeneration_title() -> str:
    """The degeneration plot's caption: the registered detectors' labels ("Non-termination,
    tail repetition and premature endings")."""
    labels = [d.label.split(" (")[0] for d in registry.detectors()]
    text = ", ".join(labels[:-1]) + (" and " if len(labels) > 1 else "") + labels[-1]
    return text[:1].upper() + text[1:]


_DRIFT_COLS: tuple[tuple[str, Callable[[TaskRow], float | None]], ...] = (
    ("stop drift", lambda t: t.stop_drift_mean),
    ("answer drift", lambda t: t.answer_drift_mean),
)

# C0/C1 controls but \t and \n, DEL, bidi embeddings/overrides/isolates, lone surrogates,
# noncharacters: anything that could hide, reorder or break text on the page.
_BAD = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff\ufffe\uffff]")
_SURROGATES = re.compile("[\ud800-\udfff]")
_JSON_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
_JSON_UNSAFE = re.compile("[<>&\u2028\u2029]")


_CONTROL_NAMES = {0x00: "NUL", 0x07: "BEL", 0x08: "BS", 0x0B: "VT", 0x0C: "FF", 0x0D: "CR", 0x1B: "ESC", 0x7F: "DEL"}
_RUNS = re.compile(f"({_BAD.pattern})\\1*")


def control_name(ch: str) -> str:
    """A readable name for a character of ``_BAD``: NUL, ESC, CR, ... or U+XXXX."""
    c = ord(ch)
    return _CONTROL_NAMES.get(c, f"U+{c:04X}")


def _raw(s: Any) -> str:
    if isinstance(s, str):
        return s
    if s is None or (np.ndim(s) == 0 and pd.isna(s)):
        return ""
    return str(s)


def clean(s: Any) -> str:
    """Untrusted text as inert, printable, UTF-8-encodable text: each character of
    ``_BAD`` becomes its name in brackets (⟨ESC⟩, ⟨U+D800⟩)."""
    return _BAD.sub(lambda m: f"\u27e8{control_name(m.group())}\u27e9", _raw(s))


def pieces(text: str, kind: int) -> list[list[Any]]:
    """Explorer segments of one stretch of text: [kind, text] and, for each run of one
    ``_BAD`` character, [3, name, kind, count] (the page shows it as a labelled chip)."""
    out: list[list[Any]] = []
    pos = 0
    for m in _RUNS.finditer(text):
        if m.start() > pos:
            out.append([kind, text[pos : m.start()]])
        out.append([3, control_name(m.group(1)), kind, m.end() - m.start()])
        pos = m.end()
    if pos < len(text):
        out.append([kind, text[pos:]])
    return out


def script_json(data: Any) -> str:
    """JSON that is safe inside ``<script type="application/json">`` (and in JS source)."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return _JSON_UNSAFE.sub(lambda m: _JSON_ESCAPES[m.group()], text)


# -- template environment -------------------------------------------------------------


def _finite(x: Any) -> bool:
    try:
        return x is not None and math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def _pct(x: Any, digits: int = 1) -> str:
    return pct(x, digits, missing="–")


def _pts(x: Any) -> str:
    return pts(x, unit="", missing="–")


def _fmt(x: Any, spec: str = ".3f") -> str:
    return format(float(x), spec) if _finite(x) else "–"


def _pval(x: Any) -> str:
    if not _finite(x):
        return "–"
    return "<0.001" if float(x) < 0.001 else f"{float(x):.3f}"


def _finalize(v: Any) -> Any:
    # Markup (the inlined script, stylesheet and JSON) is ours; every other string is
    # cleaned here and autoescaped after.
    if isinstance(v, Markup) or not isinstance(v, str):
        return v
    return clean(v)


_env = Environment(
    loader=PackageLoader("harness", "report"),
    autoescape=select_autoescape(default=True, default_for_string=True),
    undefined=StrictUndefined,
    finalize=_finalize,
)
_env.filters.update(pct=_pct, pts=_pts, fmt=_fmt, pval=_pval)


@cache
def _asset(name: str) -> str:
    text = resources.files("harness.report").joinpath(name).read_text(encoding="utf-8")
    if re.search(r"</(script|style)|<!--", text, re.I):
        raise ValueError(f"{name} must not contain '</script', '</style' or '<!--'")
    return text


def _sha256(text: str) -> str:
    return "sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode()


# -- flip explorer data ---------------------------------------------------------------


def common_prefix(a: str, b: str) -> int:
    """Length of the common prefix of two strings (binary search over C-speed compares)."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n  # a[:lo] == b[:lo], a[:hi] != b[:hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[lo:mid] == b[lo:mid]:
            lo = mid
        else:
            hi = mid
    return lo


def _split(text: str, kind: int, cap: int, head_share: float) -> list[list[Any]]:
    """``text`` as segments (see ``pieces``), cut to ``cap`` characters around a gap
    [2, n omitted] that keeps ``head_share`` of the cap before it."""
    if not text:
        return []
    if len(text) <= cap:
        return pieces(text, kind)
    head = int(cap * head_share)
    tail = cap - head
    segs: list[list[Any]] = pieces(text[:head], kind) if head else []
    segs.append([2, len(text) - head - tail])
    if tail:
        segs += pieces(text[len(text) - tail :], kind)
    return segs


def output_segments(text: str, div: int, cap: int) -> list[list[Any]]:
    """An output as segments: [0, shared prefix], [1, diverged rest], [2, n omitted].

    Cut to ``cap`` characters: the shared part keeps its end (the context right before
    the divergence), the diverged part its start and its end (where loops show)."""
    shared, rest = text[:div], text[div:]
    if len(text) <= cap:
        return _split(shared, 0, cap, 0) + _split(rest, 1, cap, 1)
    s_cap = min(len(shared), max(cap // 3, cap - len(rest)))
    return _split(shared, 0, s_cap, 0.25) + _split(rest, 1, cap - s_cap, 0.7)


def _loop_info(row: Mapping[str, Any], cand: str) -> JsonObject | None:
    """The candidate's tail loop for display: its unit as text, repeats, start character."""
    if not _true(row.get("loop_cand")):
        return None
    unit = _raw(row.get("loop_unit_cand"))
    tokens = False
    start: int | None = None
    if unit and unit in cand[-(3 * len(unit) + 64) :]:
        start = _int(row.get("loop_start_cand"))  # found on the text: characters
    else:  # found on token ids: find the same loop in the text for display
        lp = detectors.tail_repetition_text(cand[-20000:])
        if lp is not None:
            unit, start = str(lp.unit), len(cand) - lp.span
        else:
            tokens = True
    reps = _num(row.get("loop_repeats_cand"))
    return {
        "u": clean(unit[:_UNIT_CAP]),
        "ul": len(unit),
        "tok": tokens,
        "r": None if reps is None else round(reps, 1),
        "s": start,
        "n": len(cand),
    }


def _true(x: Any) -> bool:
    return bool(x) if x is not None and not (np.ndim(x) == 0 and pd.isna(x)) else False


def _int(x: Any) -> int:
    return int(x) if _finite(x) else -1


def _num(x: Any) -> float | None:
    return round(float(x), 4) if _finite(x) else None


def _item(row: Mapping[str, Any], task_idx: int, kind: str, caps: tuple[int, int, int]) -> JsonObject:
    """One explorer item (short keys keep 10,000-item pages small)."""
    cp, ct, co = caps
    b, c = _raw(row["output_base"]), _raw(row["output_cand"])
    div = common_prefix(b, c)
    same = div == len(b) == len(c)
    return {
        "t": task_idx,
        "id": clean(_raw(row["item_id"])[:_ID_CAP]),
        "k": kind,
        "m": "gen" if row["kind"] == "generate_until" else "mc",
        "p": _split(_raw(row["prompt"]), 0, cp, 0.3),
        "g": _split(_raw(row["target"]), 0, ct, 1),
        "ab": _split(_raw(row["answer_base"]), 0, _ANSWER_CAP, 1),
        "ac": _split(_raw(row["answer_cand"]), 0, _ANSWER_CAP, 1),
        "sb": _num(row["score_base"]),
        "sc": _num(row["score_cand"]),
        "fb": clean(_raw(row["finish_base"])[:20]),
        "fc": clean(_raw(row["finish_cand"])[:20]),
        "nb": _int(row["ntok_base"]),
        "nc": _int(row["ntok_cand"]),
        # the registered detectors that flag the base's output and the candidate's
        "db": [d.name for d in registry.detectors() if _true(row.get(f"{d.name}_base"))],
        "dc": [d.name for d in registry.detectors() if _true(row.get(f"{d.name}_cand"))],
        "lp": _loop_info(row, c),
        "cs": clean(_raw(row.get("cause"))),  # why a negative flip was lost (harness.causes); "" otherwise
        "dv": -1 if same else div,
        "b": output_segments(b, div, co),
        "c": output_segments(c, div, co),
    }


def _pools(items: pd.DataFrame) -> dict[str, np.ndarray]:
    """Row positions of each kind of change, in item-table order."""
    flip = items["flip"].fillna("").astype(str).to_numpy()

    def col(name: str) -> np.ndarray:
        if name not in items.columns:
            return np.zeros(len(items), dtype=bool)
        return items[name].fillna(False).astype(bool).to_numpy()

    changed = col("answer_changed")
    for d in registry.detectors():  # or a detector flags the candidate and not the base
        changed = changed | (col(f"{d.name}_cand") & ~col(f"{d.name}_base"))
    other = (flip == "") & changed
    return {"neg": np.flatnonzero(flip == "neg"), "pos": np.flatnonzero(flip == "pos"), "chg": np.flatnonzero(other)}


def _estimate(lengths: dict[str, np.ndarray], caps: tuple[int, int, int]) -> float:
    """Rough bytes of the explorer JSON for items of these text lengths at these caps."""
    n = len(lengths["prompt"])
    total = n * 420.0  # keys, numbers, answers, item id
    for col, cap in zip(("prompt", "target", "output_base", "output_cand"), (caps[0], caps[1], caps[2], caps[2])):
        total += float(np.minimum(lengths[col], cap).sum())
    return 1.15 * total


def _row_columns() -> tuple[str, ...]:
    """The item columns the explorer reads: the item's own and every registered detector's."""
    return (*BASE_COLUMNS, *(c for d in registry.detectors() for c in d.columns), "cause")


def _listing(tasks: list[str], task_idx: Mapping[str, int], groups: Sequence[tuple[str, Sequence[str]]]) -> JsonObject:
    """What the explorer needs besides its items: task names, groups, the score that counts as
    right, and each registered detector as [name, label, badge or null]."""
    listing: JsonObject = {
        "tasks": [clean(t) for t in tasks],
        "correct_at": CORRECT_AT,
        "flags": [[d.name, d.label, d.badge] for d in registry.detectors()],
    }
    if groups:  # [name, [task index, ...]]: the task filter offers each group as a whole
        listing["groups"] = [[clean(g), [task_idx[t] for t in subs if t in task_idx]] for g, subs in groups]
    return listing


def explorer_data(
    items: pd.DataFrame,
    tasks: list[str],
    budget: int = DATA_BUDGET,
    groups: Sequence[tuple[str, Sequence[str]]] = (),
) -> tuple[str, JsonObject]:
    """The explorer's JSON (script-safe) and notes on what it holds.

    Every negative flip and up to MAX_SAMPLE positive flips and other changed answers
    (seeded samples), cut to the largest display caps that fit ``budget``. Where even the
    smallest caps do not fit, items are taken in priority order (negative flips in a
    seeded order, then the samples) until the budget is spent; the page says so."""
    pools = _pools(items)
    rng = np.random.default_rng(SEED)
    order = {k: rng.permutation(v) for k, v in pools.items()}
    for k in ("pos", "chg"):
        order[k] = order[k][:MAX_SAMPLE]
    wanted = [(k, int(pos)) for k in ("neg", "pos", "chg") for pos in order[k]]
    rows = np.array([pos for _, pos in wanted], dtype=int)
    cols = {c: items[c].take(rows).to_numpy(dtype=object) for c in _row_columns() if c in items.columns}
    lengths = {
        c: np.fromiter((len(v) if isinstance(v, str) else 0 for v in cols[c]), dtype=np.int64, count=len(rows))
        for c in ("prompt", "target", "output_base", "output_cand")
    }
    level = next((i for i, lv in enumerate(CAP_LEVELS) if _estimate(lengths, lv) <= budget), len(CAP_LEVELS) - 1)
    task_idx = {t: i for i, t in enumerate(tasks)}
    listing = _listing(tasks, task_idx, groups)
    head = script_json(listing)[:-1] + ',"items":['
    while True:
        caps = CAP_LEVELS[level]
        used = len(head.encode("utf-8")) + 2
        kept: list[tuple[int, int, str]] = []  # (kind rank, row, json)
        for j, (kind, pos) in enumerate(wanted):
            row = {c: v[j] for c, v in cols.items()}
            text = script_json(_item(row, task_idx.get(_raw(row["task"]), 0), kind, caps))
            size = len(text.encode("utf-8")) + 1
            if used + size > budget:
                break
            used += size
            kept.append((("neg", "pos", "chg").index(kind), pos, text))
        if len(kept) == len(wanted) or level == len(CAP_LEVELS) - 1:
            break
        level += 1
    kept.sort()
    shown = {k: sum(1 for rank, _, _ in kept if rank == i) for i, k in enumerate(("neg", "pos", "chg"))}
    data = head + ",".join(text for _, _, text in kept) + "]}"
    notes = {
        "total": {k: int(len(v)) for k, v in pools.items()},
        "shown": shown,
        "caps": {"prompt": caps[0], "target": caps[1], "output": caps[2]},
        "bytes": len(data.encode("utf-8")),
    }
    return data, notes


# -- page -----------------------------------------------------------------------------


def _rule_rows(cmp: Comparison) -> tuple[list[RuleOutcome], dict[str, str]]:
    rows = list(cmp.verdict.results)
    worst: dict[str, str] = {}
    for r in cmp.verdict.results:
        if r.fired and worst.get(r.task) != "FAIL":
            worst[r.task] = r.severity
    return rows, worst


def render_html(cmp: Comparison) -> str:
    items = cmp.items
    task_names = [t.name for t in cmp.tasks]
    data_json, notes = explorer_data(items, task_names, groups=[(g.name, g.subtasks) for g in cmp.groups])
    units = cmp.units  # a group is one row, its subtasks folded under it
    subtasks_of = {g.name: [t for t in cmp.tasks if t.group == g.name] for g in cmp.groups}
    rules, worst = _rule_rows(cmp)
    fired = [r for r in rules if r.fired]
    drift_cols = [(label, drift) for label, drift in _DRIFT_COLS if any(_finite(drift(t)) for t in cmp.tasks)]
    plot_list = [
        ("plot-accuracy", "Accuracy per task", plots.accuracy_plot(units)),
        ("plot-flips", "Flips per task", plots.flips_plot(units)),
        ("plot-causes", "Lost items by cause", plots.causes_plot(items, units)),
        ("plot-lengths", "Output length", plots.lengths_plot(items)),
        ("plot-degeneration", degeneration_title(), plots.degeneration_plot(units, registry.detectors())),
        ("plot-stop-drift", "Stop-token drift", plots.stop_drift_plot(items)),
    ]
    css, js = _asset("report.css"), _asset("explorer.js")
    csp = (
        f"default-src 'none'; img-src data:; style-src '{_sha256(css)}'; script-src '{_sha256(js)}'; "
        "base-uri 'none'; form-action 'none'"
    )
    page = _env.get_template("report.html").render(
        cmp=cmp,
        regress_version=__version__,
        schema_version=SCHEMA_VERSION,
        level=cmp.verdict.level,
        fired=fired,
        rules=rules,
        worst=worst,
        tasks=units,
        subtasks_of=subtasks_of,
        show_metric=any(t.metric for t in (*cmp.tasks, *cmp.groups)),
        overall=cmp.overall,
        detectors=registry.detectors(),
        drift_cols=drift_cols,
        plots=[(pid, title, uri) for pid, title, uri in plot_list if uri],
        notes=notes,
        n_items=len(items),
        csp=Markup(csp),  # ours: hashes and keywords only
        css=Markup(css),
        js=Markup(js),
        data_json=Markup(data_json),
    )
    return _SURROGATES.sub("\ufffd", page)
