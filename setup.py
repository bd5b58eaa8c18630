"""Build step: the wheel carries the built-in suites.

The built-in suites live in the top-level ``suites/`` (suite YAMLs, their task YAMLs and
JSONL data, the probe prompts). ``build_py`` copies that folder into the built package as
``harness/builtin_suites/``, so ``pip install .`` and the wheel carry them; nothing is
copied into the source tree. An editable install (``pip install -e .``) reads ``suites/``
in place. ``harness.suites`` looks in both (see ``BUILTIN_SUITES``). Everything else about
the package is in ``pyproject.toml``.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

SUITES = Path(__file__).resolve().parent / "suites"


class BuildPyWithSuites(build_py):
    def run(self) -> None:
        super().run()
        if self.editable_mode:  # the editable install finds suites/ where it is
            return
        dst = Path(self.build_lib) / "harness" / "builtin_suites"
        shutil.rmtree(dst, ignore_errors=True)  # a suite removed from suites/ must not linger from an old build
        shutil.copytree(SUITES, dst, ignore=shutil.ignore_patterns("__pycache__", ".*"))


setup(cmdclass={"build_py": BuildPyWithSuites})
