"""The one error family the CLI turns into a one-line message and exit code 2.

Raise ``RegressError`` (or a subclass) for every problem the user can fix: a missing or
broken checkpoint, a malformed suite or policy, an unknown task or backend, an outage.
The CLI prints ``regress: error: <message>`` without a traceback and exits 2.
"""

from __future__ import annotations


class RegressError(Exception):
    """A user-facing error: one line, exit code 2."""

    exit_code = 2


class CheckpointError(RegressError):
    """A checkpoint is missing, incomplete or unreadable."""


class SuiteError(RegressError):
    """A suite, task or item set is malformed or unknown."""


class PolicyError(RegressError):
    """A gate policy file is malformed."""


class BackendError(RegressError):
    """A backend is unknown, not installed, or failed (after retries) to answer."""


class StoreError(RegressError):
    """The record store is locked, unwritable or corrupt."""
