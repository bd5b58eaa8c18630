"""Progress of a checkpoint's run on stderr: requests done of total, tokens/s, ETA.

On a terminal it is one line, rewritten in place at most every half second; elsewhere (a CI
log, a pipe) a plain line every ``every_s`` seconds, so a log shows the run moving without
filling up. ``Progress(label, total)`` is fed with ``update(n_requests, n_tokens)`` as
chunks finish and ``close()``d at the end, which prints the final line::

    base: generating 1,200/4,000 requests, 18,340 tokens (612 tok/s), ETA 2m10s
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


def _duration(s: float) -> str:
    s = int(round(s))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class Progress:
    """Requests done, tokens made and time left for one kind of work of one checkpoint."""

    def __init__(
        self,
        label: str,
        total: int,
        stream: TextIO | None = None,
        every_s: float = 30.0,
        clock: object = time.monotonic,
    ) -> None:
        self.label, self.total = label, total
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.every_s = every_s
        self._clock = clock
        self.t0 = self._now()
        self._last = self.t0
        self.done = 0
        self.tokens = 0
        self._written = ""

    def _now(self) -> float:
        return float(self._clock())  # type: ignore[operator]

    def line(self) -> str:
        elapsed = max(self._now() - self.t0, 1e-9)
        parts = [f"{self.label}: {self.done:,}/{self.total:,} requests"]
        if self.tokens:
            parts.append(f"{self.tokens:,} tokens ({self.tokens / elapsed:,.0f} tok/s)")
        if 0 < self.done < self.total:
            parts.append(f"ETA {_duration(elapsed * (self.total - self.done) / self.done)}")
        elif self.done >= self.total:
            parts.append(f"done in {_duration(elapsed)}")
        return ", ".join(parts)

    def update(self, n: int, tokens: int = 0) -> None:
        self.done += n
        self.tokens += tokens
        now = self._now()
        if self.tty and now - self._last >= 0.5:
            self._write("\r\x1b[2K" + self.line())
        elif not self.tty and now - self._last >= self.every_s:
            self._write(self.line() + "\n")
        else:
            return
        self._last = now

    def close(self) -> None:
        last = self.line()
        if self.tty:
            self._write("\r\x1b[2K" + last + "\n")
        elif self._written != last + "\n":  # a log that just got this line does not get it twice
            self._write(last + "\n")

    def _write(self, text: str) -> None:
        self._written = text
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):
            pass  # a closed or broken stderr must not stop the run
