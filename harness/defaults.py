"""regress's defaults and the environment variables it reads, in one place (a leaf module).

As lm-eval's ``defaults.py``: constants and the names of environment variables, plus the few
functions that read them, so that no other module spells ``"REGRESS_STORE"`` or ``"reports"``.
It imports nothing of ``harness``.
"""

from __future__ import annotations

import os
from pathlib import Path

# -- folders --------------------------------------------------------------------------

STORE_ENV = "REGRESS_STORE"  # the record store folder, where --store is not given
STORE_DIR = "baselines"  # ... and where neither is
REPORTS_DIR = "reports"  # where reports go where --out is not given
CACHE_ENV = "REGRESS_CACHE"  # regress's own cache (file hashes, lm-eval's task index)
DATA_ENV = "REGRESS_DATA"  # the data root of registered tasks, where --data is not given

# -- switches -------------------------------------------------------------------------

ONLINE_ENV = "REGRESS_ONLINE"  # "1": let the Hugging Face libraries reach the hub
DEBUG_ENV = "REGRESS_DEBUG"  # set: an internal error raises with its traceback
HASH_THREADS_ENV = "REGRESS_HASH_THREADS"  # threads that hash checkpoint files (0: one per core, up to 16)

# -- run defaults ---------------------------------------------------------------------

SUITE = "demo"  # the suite of `regress run|compare` without --suite
BACKEND = "hf"  # the engine without --backend
MAX_GEN_TOKS = 256  # a generation's token budget where the task gives none (lm-eval's default)


def store_dir() -> str:
    """The record store folder a command uses without ``--store``."""
    return os.environ.get(STORE_ENV, STORE_DIR)


def cache_dir() -> Path:
    """regress's own cache folder (``$REGRESS_CACHE``, else ``~/.cache/regress``): file hashes,
    lm-eval's task index."""
    return Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "regress"))


def data_env() -> str | None:
    """The data root named by ``$REGRESS_DATA`` (None where unset or empty)."""
    return os.environ.get(DATA_ENV) or None


def online() -> bool:
    return os.environ.get(ONLINE_ENV) == "1"


def debug() -> bool:
    return bool(os.environ.get(DEBUG_ENV))


def hash_threads() -> int:
    """Threads asked for by ``$REGRESS_HASH_THREADS`` (0: choose)."""
    return int(os.environ.get(HASH_THREADS_ENV, 0))
