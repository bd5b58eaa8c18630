"""What regress keeps off the terminal unless ``-v``: the libraries' and engines' own output.

Their chatter repeats per request, per task or per engine start (transformers' "max_new_tokens
and max_length both set", datasets' "Using the latest cached version", lm-eval's INFO lines,
vLLM's weight-loading bar and its C++ "NUMA binding" warning) and buries the verdict in a CI
log. regress's own loggers (``harness.*``), progress lines and errors are untouched.

Three layers, because the output has three sources:

* Python loggers, warnings and progress bars in this process: ``quiet_third_party`` (loggers
  at ERROR, warnings ignored, the libraries' verbosity and bar switches).
* The same in processes these libraries start (vLLM's engine core and workers) and in C++
  (torch's ``TORCH_WARN``, which writes to file descriptor 2 itself): environment variables,
  set before the libraries are imported and inherited by every child process.
* Whatever still reaches file descriptor 2 while an engine starts: ``engine_output`` sends it
  to a temporary file, from which a failed start's cause is read back.

A library caller that never goes through the CLI keeps every library's output (quiet only
once ``quiet_third_party(verbose=False)`` has run).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator
from typing import IO

THIRD_PARTY = (
    "transformers", "datasets", "lm_eval", "lm-eval", "huggingface_hub", "accelerate", "evaluate",
    "torch", "vllm", "filelock", "fsspec", "urllib3", "httpx", "absl", "nltk", "sacrebleu", "rouge_score",
)  # fmt: skip

# Read by the libraries (and their child processes) at import: the levels and bar switches.
QUIET_ENV = {
    "TRANSFORMERS_VERBOSITY": "error",
    "DATASETS_VERBOSITY": "error",
    "VLLM_LOGGING_LEVEL": "ERROR",  # vLLM's loggers, in this process and in its engine processes
    "TORCH_CPP_LOG_LEVEL": "ERROR",  # C++ warnings (TORCH_WARN), e.g. vLLM CPU's "NUMA binding"
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # transformers' "Loading weights" bar too
    # tqdm's default for bars that pass no `disable` (lm-eval's "building contexts"); regress's
    # own bars pass disable=None (shown on a terminal, hidden in a log) and are unaffected.
    "TQDM_DISABLE": "1",
}

_quiet = False


def is_quiet() -> bool:
    """Whether the CLI runs without -v (library output kept off the terminal)."""
    return _quiet


def quiet_third_party(verbose: bool) -> None:
    """Without -v: third-party loggers at ERROR, their Python warnings ignored, their progress
    bars hidden. Environment variables first (where the user has not set them), for the
    libraries not imported yet and the processes they start; the verbosity APIs for those
    already imported (a test calling ``main`` in-process)."""
    global _quiet
    _quiet = not verbose
    if verbose:
        return
    for name, value in QUIET_ENV.items():
        os.environ.setdefault(name, value)
    for name in THIRD_PARTY:
        logging.getLogger(name).setLevel(logging.ERROR)
        warnings.filterwarnings("ignore", module=rf"{re.escape(name)}(\.|$)")
    if "transformers" in sys.modules:
        from transformers.utils import logging as tf_logging

        tf_logging.set_verbosity_error()
        tf_logging.disable_progress_bar()
    if "datasets" in sys.modules:
        import datasets

        datasets.utils.logging.set_verbosity_error()
        datasets.disable_progress_bars()


@contextlib.contextmanager
def engine_output() -> Iterator[Callable[[], str]]:
    """Around an engine's start, when quiet: file descriptors 1 and 2 go to an unlinked
    temporary file (C++ warnings; the engine processes started meanwhile, which inherit both
    and keep them: vLLM's loggers write to stdout); yields a function that reads back what was
    written (a failed start's cause is in it). With -v, or outside the CLI, nothing is
    redirected and it reads back ""."""
    if not _quiet:
        yield lambda: ""
        return
    with tempfile.TemporaryFile() as buf:
        _flush()
        saved = [os.dup(1), os.dup(2)]
        for fd in (1, 2):
            os.dup2(buf.fileno(), fd)
        try:
            yield lambda: _read(buf)
        finally:
            _flush()
            for fd, old in zip((1, 2), saved):
                os.dup2(old, fd)
                os.close(old)


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()


def _read(buf: IO[bytes]) -> str:
    _flush()
    buf.seek(0)
    return buf.read().decode("utf-8", "replace")


# a log line's decoration: vLLM's process prefix "(Worker pid=42) " and "ERROR 12-05 06:32:56 [core.py:1510] "
_DECORATION = re.compile(r"^(\([^)]*pid=\d+\) )?((DEBUG|INFO|WARNING|ERROR|CRITICAL) [\d-]+ [\d:]+ \[[^]]*\] ?)?")
_EXCEPTION = re.compile(r"^(?:[A-Za-z_]\w*\.)*[A-Za-z_]\w*(?:Error|Exception)(?:: \S.*)?$")
_FRAME = re.compile(r'^  File "(?:.*/site-packages/)?([^"]+)", line (\d+), in (\S+)$')
# what a parent or supervisor says when the cause is elsewhere in the log
_RELAYS = ("initialization failed", "see root cause", "see stack trace")


def cause_in(log: str) -> str | None:
    """The root cause in an engine's captured output: the first exception line (``SomeError:
    message``) that is not a process relaying another's failure; one without a message is
    named with the frame that raised it (``AssertionError at path.py:197: assert ...``)."""
    lines = [_DECORATION.sub("", line.rstrip()) for line in log.splitlines()]
    for i, line in enumerate(lines):
        if not _EXCEPTION.match(line) or any(r in line.lower() for r in _RELAYS):
            continue
        if ": " in line:
            return line
        frames = [(j, m) for j in range(i) if (m := _FRAME.match(lines[j]))]
        if not frames:
            return line
        j, m = frames[-1]
        code = lines[j + 1].strip() if j + 1 < i else ""
        return f"{line} at {m.group(1)}:{m.group(2)} ({m.group(3)})" + (f": {code}" if code else "")
    return None
