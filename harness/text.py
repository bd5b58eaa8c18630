"""Text helpers every stage shares: percent formatting and making untrusted text valid UTF-8.

    pct(0.1234)        -> "12.3%"        pct(None) -> "n/a"
    pts(-0.021)        -> "-2.1 pts"     pts(-0.021, unit="") -> "-2.1"
    utf8("a\\ud800")    -> "a\\ufffd"

One definition each, so the gate's messages, report.md, report.html and items.parquet say the
same number the same way.
"""

from __future__ import annotations

import math
from typing import Any


def _finite(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def pct(x: Any, digits: int = 1, missing: str = "n/a") -> str:
    """A fraction as a percentage ("12.3%"); ``missing`` for None or a number that is not finite."""
    v = _finite(x)
    return missing if v is None else f"{100 * v:.{digits}f}%"


def pts(x: Any, unit: str = " pts", missing: str = "n/a") -> str:
    """A signed difference of fractions in percentage points ("+1.2 pts")."""
    v = _finite(x)
    return missing if v is None else f"{100 * v:+.1f}{unit}"


def utf8(s: str) -> str:
    """Untrusted text made valid UTF-8 (lone surrogates become U+FFFD), as Arrow and JSON need."""
    try:
        s.encode("utf-8")
        return s
    except UnicodeEncodeError:
        return s.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
