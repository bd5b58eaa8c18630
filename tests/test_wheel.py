"""The installed package carries the built-in suites (issue 12).

Builds the wheel, installs it into a fresh virtual environment and runs the installed
``regress compare --suite demo --limit 20`` on the demo checkpoints from a folder outside
the repository. The fresh environment reuses this one's torch and other dependencies
through a ``.pth`` line (nothing is downloaded or reinstalled); the regress package
itself comes from the wheel alone. A second test does the same for an editable install,
which reads the repository's ``suites/`` in place.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow

# Files a build may write in the checkout; each must be ignored by git.
BUILD_LEFTOVERS = ("build/", "dist/", "harness/builtin_suites/", "regress.egg-info/")
DEMO_TASKS = ("demo_add", "demo_rev", "demo_sort", "demo_cmp", "demo_count")


def _run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    res = subprocess.run(cmd, text=True, capture_output=True, env=env, timeout=900, **kw)  # type: ignore[call-overload]
    assert res.returncode == 0, f"{cmd} exited {res.returncode}:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res


def _untracked() -> set[str]:
    out = _run(["git", "ls-files", "--others", "--exclude-standard"], cwd=REPO).stdout
    return {line for line in out.splitlines() if line.startswith(BUILD_LEFTOVERS)}


def _fresh_venv(path: Path) -> Path:
    """A virtual environment without regress that sees this one's packages (torch, lm-eval...)."""
    _run([sys.executable, "-m", "venv", "--without-pip", str(path)])
    python = path / "bin" / "python"
    site = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()
    # a plain path line: this venv's own .pth files (the editable regress finder) are not run
    (Path(site) / "_shared_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


def _pip_install(python: Path, *what: str) -> None:
    # --ignore-installed: the shared site-packages holds the editable regress; neither
    # look at it nor touch it. --no-index: no network.
    _run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--ignore-installed", *what])


def _where(python: Path, cwd: Path) -> dict[str, str]:
    code = (
        "import json, harness.suites as s; "
        "print(json.dumps({'module': s.__file__, 'suite': str(s.resolve_suite_path('demo')), "
        "'hash': s.load_suite('demo').content_hash}))"
    )
    return json.loads(_run([str(python), "-c", code], cwd=cwd).stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    before = _untracked()
    out = tmp_path_factory.mktemp("wheel")
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out), str(REPO)])
    assert _untracked() <= before, "the build left files in the checkout that git does not ignore"
    (whl,) = out.glob("regress-*.whl")
    return whl


def test_wheel_carries_the_suites_and_runs_compare(wheel, demo, tmp_path):
    import zipfile

    names = set(zipfile.ZipFile(wheel).namelist())
    for f in ("demo.yaml", "instruct.yaml", "demo/demo_add.yaml", "demo/add.jsonl", "probes/english.jsonl"):
        assert f"harness/builtin_suites/{f}" in names, f

    venv = tmp_path / "venv"
    python = _fresh_venv(venv)
    _pip_install(python, str(wheel))
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    where = _where(python, cwd)
    assert where["module"].startswith(str(venv)), where  # the wheel's harness, not the checkout's
    assert Path(where["suite"]).parent.name == "builtin_suites" and where["suite"].startswith(str(venv)), where
    from harness.suites import load_suite

    assert where["hash"] == load_suite(str(REPO / "suites" / "demo.yaml")).content_hash

    out = tmp_path / "rep"
    cmd = [
        str(venv / "bin" / "regress"), "compare", "--suite", "demo", "--limit", "20",
        "--base", str(demo["base"]), "--model", str(demo["ft-identical"]),
        "--store", str(tmp_path / "store"), "--out", str(out),
    ]  # fmt: skip
    _run(cmd, cwd=cwd)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["suite"]["name"] == "demo" and summary["suite"]["hash"] == where["hash"]
    # 20 items per task are too few to detect the policy's drop: WARN (inconclusive), exit 0
    assert summary["verdict"] in ("PASS", "WARN")
    assert {t["name"]: t["n"] for t in summary["tasks"]} == {t: 20 for t in DEMO_TASKS}


def test_editable_install_reads_suites_in_place(tmp_path):
    before = _untracked()
    python = _fresh_venv(tmp_path / "venv")
    _pip_install(python, "--no-build-isolation", "-e", str(REPO))
    assert _untracked() <= before, "the editable install left files in the checkout that git does not ignore"
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    where = _where(python, cwd)
    assert where["module"] == str(REPO / "harness" / "suites.py")
    assert where["suite"] == str(REPO / "suites" / "demo.yaml")
    # a suite of the user's own, in ./suites/, comes before the built-in one of that name
    (cwd / "suites").mkdir()
    (cwd / "suites" / "demo.yaml").write_text((REPO / "suites" / "demo.yaml").read_text() + "# mine\n")
    (cwd / "suites" / "demo").symlink_to(REPO / "suites" / "demo")
    mine = _where(python, cwd)
    assert mine["suite"] == str(cwd / "suites" / "demo.yaml") and mine["hash"] != where["hash"]
