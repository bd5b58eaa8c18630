"""Hub ids pinned to a revision: ``org/name[@revision]`` resolved through the HF cache.

``resolve("HuggingFaceTB/SmolLM2-135M-Instruct@main")`` finds the snapshot folder the
Hugging Face cache holds for that revision (``models--org--name/refs/<revision>`` names
the commit, ``snapshots/<commit>/`` holds the files) with ``huggingface_hub``, offline:
the hub itself is asked only with ``REGRESS_ONLINE=1``. A local folder of that name
always wins over an id. An id that is not cached is one line naming what to download.
The store key then holds the commit (and, as for any folder, every file's hash), and
the report names the id, the revision asked for and the commit used.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from harness.errors import CheckpointError

# org/name, optionally @revision (a branch, tag or commit); what the hub allows in names
_ID = re.compile(r"^(?P<id>[A-Za-z0-9][\w.-]*/[\w.-]+)(?:@(?P<rev>[\w./-]+))?$")


@dataclass(frozen=True)
class HubRef:
    """A hub id resolved in the cache: the snapshot folder and the commit it is."""

    repo_id: str
    revision: str
    commit: str
    path: Path


def parse(ref: str) -> tuple[str, str | None] | None:
    """(id, revision or None) where ``ref`` reads as a hub id, else None."""
    m = _ID.match(ref)
    return (m["id"], m["rev"]) if m else None


def online() -> bool:
    return os.environ.get("REGRESS_ONLINE") == "1"


def resolve(ref: str, fetch: bool = True) -> HubRef | None:
    """The cached snapshot of hub id ``ref`` (None where ``ref`` is a local path or does not
    read as an id); ``CheckpointError`` where it is an id that is not cached (and, with
    ``REGRESS_ONLINE=1`` and ``fetch``, cannot be fetched)."""
    if Path(ref).expanduser().exists():
        return None
    parsed = parse(ref)
    if parsed is None:
        return None
    repo_id, revision = parsed
    rev = revision or "main"
    path = _snapshot(repo_id, rev, fetch and online())
    return HubRef(repo_id, rev, path.name, path)


def _snapshot(repo_id: str, rev: str, fetch: bool) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError

    try:
        cache = os.environ.get("HF_HUB_CACHE") or None  # read per call: huggingface_hub reads it once, at import
        return Path(snapshot_download(repo_id, revision=rev, cache_dir=cache, local_files_only=not fetch))
    except HFValidationError as e:
        raise CheckpointError(f"checkpoint not found: {repo_id}@{rev} is neither a folder nor a hub id ({e})") from e
    except Exception as e:  # noqa: BLE001 - hub and cache errors come in many classes; all mean "not here"
        said = f"checkpoint not found: no folder {repo_id}, and hub model {repo_id}@{rev}"
        if fetch:
            raise CheckpointError(f"{said} cannot be fetched ({type(e).__name__}): check the id and revision") from e
        raise CheckpointError(
            f"{said} is not in the Hugging Face cache (HF_HUB_CACHE): download it first "
            f"(hf download {repo_id} --revision {rev}) or set REGRESS_ONLINE=1 to fetch it"
        ) from e
