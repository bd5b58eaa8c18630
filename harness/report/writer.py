"""Write a comparison's report folder atomically (temporary sibling folder, then rename)."""

from __future__ import annotations

import json
from pathlib import Path

from harness.report.html import render_html
from harness.report.markdown import render_markdown
from harness.report.summary import build_summary
from harness.store import atomic_folder
from harness.text import utf8
from harness.types import Comparison


def _items_for_parquet(cmp: Comparison):  # type: ignore[no-untyped-def]
    df = cmp.items.copy()
    for col in df.columns:
        if df[col].dtype == object:
            # untrusted text: keep it, but make it valid UTF-8 for Arrow
            df[col] = df[col].map(lambda v: utf8(v) if isinstance(v, str) else v)
    return df


def write_report(cmp: Comparison, out: str | Path) -> Path:
    out = Path(out)
    with atomic_folder(out, "report") as tmp:
        summary = build_summary(cmp)
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False), encoding="utf-8")
        (tmp / "report.md").write_text(render_markdown(cmp), encoding="utf-8")
        (tmp / "report.html").write_text(render_html(cmp), encoding="utf-8")
        _items_for_parquet(cmp).to_parquet(tmp / "items.parquet", index=False)
        from harness.report.junit import render_junit

        (tmp / "junit.xml").write_text(render_junit(cmp), encoding="utf-8")
    return out
