"""``report.md``: verdict, a per-task table and the top flipped items, for a PR comment."""

from __future__ import annotations

from harness.compare import Comparison

MAX_FLIPS = 10
MAX_CELL = 60


def _cell(s: object) -> str:
    """One table cell of untrusted text: one line, escaped pipes and backticks, cut."""
    text = str(s).replace("\\", "\\\\").replace("|", "\\|").replace("`", "'")
    text = "".join(ch if ch.isprintable() else "\ufffd" for ch in text.replace("\n", " "))
    return text[:MAX_CELL] + ("…" if len(text) > MAX_CELL else "")


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def render_markdown(cmp: Comparison) -> str:
    icon = {"PASS": "✅", "WARN": "⚠️", "FAIL": "❌"}[cmp.verdict.level]
    lines = [
        f"## regress: {icon} {cmp.verdict.level}",
        "",
        f"base `{_cell(cmp.base.path)}` ({cmp.base.fingerprint}) vs candidate "
        f"`{_cell(cmp.candidate.path)}` ({cmp.candidate.fingerprint}), suite `{cmp.suite}`, backend `{cmp.backend}`",
        "",
    ]
    if cmp.verdict.reasons:
        lines += ["**Rules that fired**", ""] + [f"- {r}" for r in cmp.verdict.reasons] + [""]
    lines += [
        "| task | n | acc base | acc cand | Δ (95% CI) | −flips | +flips | identical | non-term base→cand | loops base→cand |",
        "|---|---:|---:|---:|---|---:|---:|---:|---|---|",
    ]
    for t in cmp.tasks:
        name = f"**{t['name']}**" if t["name"] == "overall" else t["name"]
        lines.append(
            f"| {name} | {t['n']} | {_pct(t['acc_base'])} | {_pct(t['acc_candidate'])} | "
            f"{100 * t['delta']:+.1f} [{100 * t['delta_lo']:+.1f}, {100 * t['delta_hi']:+.1f}] | "
            f"{t['negative_flips']} | {t['positive_flips']} | {_pct(t['identity_rate'])} | "
            f"{_pct(t['nonterm_rate_base'])}→{_pct(t['nonterm_rate_candidate'])} | "
            f"{_pct(t['loop_rate_base'])}→{_pct(t['loop_rate_candidate'])} |"
        )
    neg = cmp.items[cmp.items["flip"] == "neg"]
    if len(neg):
        lines += ["", f"**Top negative flips** ({len(neg)} in all; see report.html)", ""]
        lines += ["| task | item | target | base | candidate | finish |", "|---|---|---|---|---|---|"]
        for r in neg.head(MAX_FLIPS).itertuples():
            lines.append(
                f"| {r.task} | {_cell(r.item_id)} | `{_cell(r.target)}` | `{_cell(r.output_base)}` | "
                f"`{_cell(r.output_cand)}` | {r.finish_base or '-'}→{r.finish_cand or '-'} |"
            )
    return "\n".join(lines) + "\n"
