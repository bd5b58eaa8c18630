"""``report.html``: one self-contained page (no network), rendered with Jinja2 autoescape.

Model outputs are untrusted: they only ever reach the page through autoescaped template
variables, so HTML, scripts and control characters render as inert text.
"""

from __future__ import annotations

from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from harness.compare import Comparison
from harness.report import plots

_env = Environment(
    loader=PackageLoader("harness", "report"),
    autoescape=select_autoescape(default=True, default_for_string=True),
    undefined=StrictUndefined,
)


def _safe_text(s: Any, limit: int = 4000) -> str:
    text = str(s)
    text = "".join(ch if ch.isprintable() or ch in "\n\t" else "\ufffd" for ch in text[:limit])
    return text + (f" … [{len(str(s)) - limit} more characters]" if len(str(s)) > limit else "")


def render_html(cmp: Comparison, summary: dict[str, Any]) -> str:
    neg = cmp.items[cmp.items["flip"] == "neg"].head(200)
    flips = [
        {
            "task": r.task,
            "item": _safe_text(r.item_id, 200),
            "target": _safe_text(r.target, 500),
            "base": _safe_text(r.output_base),
            "cand": _safe_text(r.output_cand),
            "finish": f"{r.finish_base or '-'} → {r.finish_cand or '-'}",
        }
        for r in neg.itertuples()
    ]
    return _env.get_template("report.html").render(
        s=summary,
        tasks=cmp.tasks,
        flips=flips,
        n_neg=int((cmp.items["flip"] == "neg").sum()),
        acc_plot=plots.accuracy_plot(cmp.tasks),
    )
