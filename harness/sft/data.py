"""Reading a chat SFT file (JSONL, one ``{"messages": [...]}`` per line): every input error
is a one-line ``RegressError`` naming ``file:line``, raised before a model is loaded."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from harness.errors import RegressError
from harness.sft.records import Example


def parse_rows(rows: Iterable[tuple[int, Any]], source: str) -> list[Example]:
    """Check each (line, object) is a chat example with an assistant turn; ``source:line`` errors."""
    out = []
    for line, obj in rows:
        where = f"{source}:{line}"
        msgs = obj.get("messages") if isinstance(obj, dict) else None
        if not isinstance(msgs, list) or not msgs:
            raise RegressError(f'{where}: expected {{"messages": [{{"role": ..., "content": ...}}, ...]}}')
        for j, m in enumerate(msgs):
            if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
                raise RegressError(f"{where}: message {j} needs a string role and a string content")
        if not any(m["role"] == "assistant" for m in msgs):
            raise RegressError(f"{where}: no assistant turn (nothing to score or train)")
        out.append(Example(line, tuple(msgs)))
    return out


def read_data(path: str | Path) -> list[Example]:
    """The examples of an SFT JSONL file (blank lines skipped)."""
    p = Path(path)
    if not p.is_file():
        raise RegressError(f"SFT data not found: {path}")
    rows = []
    try:
        with p.open(encoding="utf-8") as fh:
            for n, text in enumerate(fh, 1):
                if not text.strip():
                    continue
                try:
                    rows.append((n, json.loads(text)))
                except json.JSONDecodeError as e:
                    raise RegressError(f"{path}:{n}: malformed JSON: {e.msg} (column {e.colno})") from e
    except UnicodeDecodeError as e:
        raise RegressError(f"{path}: not UTF-8 text: {e.reason}") from e
    examples = parse_rows(rows, str(path))
    if not examples:
        raise RegressError(f"{path}: no examples")
    return examples
