"""The index of a many-candidate comparison: every candidate ranked, one line each.

``regress compare --base B --model M1 --model M2 ...`` writes one report folder per
candidate under ``OUT/`` and ``OUT/index.html`` + ``OUT/index.json`` ranking them: PASS
before WARN before FAIL, then by negative flip rate (lower first), accuracy change
(higher first) and the change in non-termination (lower first). Paths and names are
escaped: a folder name is user input.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from harness.types import Comparison

LEVELS = {"PASS": 0, "WARN": 1, "FAIL": 2}


@dataclass(frozen=True)
class IndexRow:
    """One candidate as the index ranks it."""

    label: str  # its report folder under OUT
    candidate: str
    verdict: str
    nfr: float
    delta: float
    nonterm_change: float
    reasons: tuple[str, ...]
    adapter_of: str | None

    @property
    def rank_key(self) -> tuple[int, float, float, float]:
        return (LEVELS.get(self.verdict, 3), self.nfr, -self.delta, self.nonterm_change)


def row_of(label: str, cmp: Comparison) -> IndexRow:
    o = cmp.overall
    nonterm = o.rate("nonterm")
    change = nonterm.candidate - nonterm.base if nonterm is not None else 0.0
    return IndexRow(
        label, cmp.candidate.path, cmp.verdict.level, o.nfr, o.delta, change, cmp.verdict.reasons,
        cmp.candidate.adapter_of,
    )  # fmt: skip


def ranked(rows: Sequence[IndexRow]) -> list[IndexRow]:
    return sorted(rows, key=lambda r: r.rank_key)


def index_json(base: str, suite: str, rows: Sequence[IndexRow]) -> str:
    body = {
        "base": base,
        "suite": suite,
        "candidates": [
            {
                "rank": i + 1,
                "report": f"{r.label}/report.html",
                "candidate": r.candidate,
                "adapter_of": r.adapter_of,
                "verdict": r.verdict,
                "nfr": r.nfr,
                "accuracy_change": r.delta,
                "nonterm_change": r.nonterm_change,
                "reasons": list(r.reasons),
            }  # fmt: skip
            for i, r in enumerate(ranked(rows))
        ],
    }
    return json.dumps(body, indent=2, ensure_ascii=False)


def _pct(x: float) -> str:
    return f"{x * 100:+.1f} pp" if x else "0"


def index_html(base: str, suite: str, rows: Sequence[IndexRow]) -> str:
    e = html.escape
    lines = [
        f"<tr class='{e(r.verdict.lower())}'><td>{i + 1}</td><td><a href='{e(r.label)}/report.html'>{e(r.label)}</a>"
        f"{' (adapter)' if r.adapter_of else ''}</td><td>{e(r.verdict)}</td><td>{r.nfr * 100:.1f}%</td>"
        f"<td>{_pct(r.delta)}</td><td>{_pct(r.nonterm_change)}</td><td>{e('; '.join(r.reasons))}</td></tr>"
        for i, r in enumerate(ranked(rows))
    ]
    worst = max((LEVELS.get(r.verdict, 2) for r in rows), default=0)
    level = [k for k, v in LEVELS.items() if v == worst][0]
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>regress: candidates vs "
        f"{e(Path(base).name)}</title><style>body{{font-family:sans-serif;margin:2em}}td,th{{padding:4px 10px;"
        "text-align:left}tr.fail td:nth-child(3){color:#b00;font-weight:bold}tr.warn td:nth-child(3)"
        "{color:#a60}tr.pass td:nth-child(3){color:#070}</style></head><body>"
        f"<h1>{len(rows)} candidates vs {e(base)} ({e(suite)}): worst {level}</h1>"
        "<p>Ranked: verdict, then negative flip rate, accuracy change, change in non-termination.</p>"
        "<table><tr><th>#</th><th>candidate</th><th>verdict</th><th>NFR</th><th>accuracy change</th>"
        f"<th>non-termination change</th><th>reasons</th></tr>{''.join(lines)}</table></body></html>\n"
    )


def write_index(out: Path, base: str, suite: str, rows: Sequence[IndexRow]) -> None:
    from harness.store import atomic_write

    atomic_write(out / "index.json", index_json(base, suite, rows).encode())
    atomic_write(out / "index.html", index_html(base, suite, rows).encode())
