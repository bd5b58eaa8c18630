"""Reports: one folder per comparison, written whole or not at all.

``write_report(cmp, out)`` renders into a temporary sibling folder and renames it into
place, so a crash or a full disk never leaves a half-written report::

    summary.json    versioned schema (harness/summary.schema.json)
    report.md       short enough for a pull-request comment
    report.html     self-contained, plots embedded, model outputs escaped
    items.parquet   one row per (task, item): both outputs, scores, finish reasons
    junit.xml       one test case per task and rule
"""

from harness.report.writer import write_report

__all__ = ["write_report"]
