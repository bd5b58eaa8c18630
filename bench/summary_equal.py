"""Do the demo fine-tunes get the same reports from a reference commit and from the working tree?

    .venv/bin/python bench/summary_equal.py [--ref 522fade] [--new REF] [--limit N] [--demo .cache/demo] [--keep]

Issue 12 changes structure, not verdicts. This script runs ``regress demo --compare`` twice
on the same demo checkpoints: once with the code of ``--ref`` (checked out into a temporary
git worktree, removed afterwards) and once with the working tree's code, each in its own
process with an empty record store, reports folder and file-hash cache. ``--new REF`` puts a
commit in place of the working tree (a second temporary worktree), so that uncommitted work
beside the change under test does not count. Both runs use this
venv's interpreter; the reference run puts its worktree first on ``sys.path`` and checks
that ``harness`` is imported from there.

For each fine-tune in ``FINE_TUNES`` of ``harness/demo/build.py`` at both the reference and
the working tree (a fine-tune new since the reference has no before and is only named),
both runs compare exactly those fine-tunes, and the script then compares

- ``summary.json`` as parsed JSON, ignoring ``regress_version`` and timing fields
  (keys such as ``seconds``, ``elapsed``, ``*_time``, ``*_s``);
- ``report.md`` as text;
- ``items.parquet``: the same columns in the same order, dtypes and values (NaN equals NaN);
- ``junit.xml`` as text, with its ``time``/``timestamp`` attributes blanked,

and prints one line per fine-tune: ``equal`` or what differs (the first differing JSON
paths). Exit 0 when everything is equal, 1 when anything differs, 2 when a run fails.

The checkpoints are never (re)built here: both runs are pinned to the build already in
``--demo`` (build it first with ``.venv/bin/regress demo``), because the demo build is
keyed by the source of ``harness/demo/*.py`` and a reference commit whose demo source
differs would otherwise retrain into the shared cache. ``--limit`` gives a quick check
(the full suite takes a few minutes per run on 2 cores).
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
IGNORED_KEYS = {"regress_version"}
# timing fields: a key whose name says it holds a duration or a moment
TIMING_KEY = re.compile(
    r"(^|_)(seconds|secs|elapsed|duration|durations|time|times|timestamp|wall|started|finished|created|ms)($|_)"
    r"|_s$"
)
MAX_PATHS = 5
SKIPPED: set[str] = set()  # the keys and columns left out as timing fields, to say so

# Runs in a fresh interpreter with the code under test first on sys.path:
# argv = demo_dir reports store limit-or-empty fine-tunes (comma-separated)
RUNNER = r"""
import json, os, sys
here = os.getcwd()
sys.path.insert(0, here)
import harness
if not os.path.realpath(harness.__file__).startswith(os.path.realpath(here) + os.sep):
    sys.exit(f"summary_equal: harness imported from {harness.__file__}, not from {here}")
print(f"harness from {harness.__file__}", flush=True)
demo, reports, store, limit, names = sys.argv[1:6]
# Pin the demo build to the checkpoints already in `demo`: never train here.
import harness.demo.build as build
for name in ("build_key", "_build", "FINE_TUNES"):
    if not hasattr(build, name):
        sys.exit(f"summary_equal: harness.demo.build has no {name}; update RUNNER in bench/summary_equal.py")
key = json.loads(open(os.path.join(demo, "BUILD.json")).read())["key"]
build.build_key = lambda: key
def _no_build(*a, **k):
    raise SystemExit("summary_equal: the demo checkpoints would be rebuilt; build them first with regress demo")
build._build = _no_build
build.FINE_TUNES = tuple(names.split(","))  # the same fine-tunes, from the same build, on both sides
from harness.cli import main
argv = ["demo", "--out", demo, "--compare", "--out-reports", reports, "--store", store]
sys.exit(main(argv + (["--limit", limit] if limit else [])))
"""


def fine_tunes(tree: Path) -> tuple[str, ...]:
    """FINE_TUNES of tree's harness/demo/build.py, read without importing torch."""
    src = tree / "harness" / "demo" / "build.py"
    for node in ast.parse(src.read_text()).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "FINE_TUNES" for t in node.targets):
            return tuple(ast.literal_eval(node.value))
    raise SystemExit(f"summary_equal: no FINE_TUNES in {src}")


def run_side(label: str, code_dir: Path, demo: Path, work: Path, limit: int | None, names: list[str]) -> Path:
    """One `regress demo --compare` with the code in code_dir; returns its reports folder."""
    reports, store, cache = work / label / "reports", work / label / "store", work / label / "cache"
    for d in (reports, store, cache):
        d.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if k not in ("REGRESS_STORE", "PYTHONPATH")}
    env["REGRESS_CACHE"] = str(cache)
    log = work / label / "log.txt"
    t0 = time.perf_counter()
    with log.open("w") as fh:
        args = [sys.executable, "-c", RUNNER, str(demo), str(reports), str(store), str(limit or ""), ",".join(names)]
        rc = subprocess.run(args, cwd=code_dir, env=env, stdout=fh, stderr=subprocess.STDOUT).returncode
    text = log.read_text(errors="replace")
    where = next((ln for ln in text.splitlines() if ln.startswith("harness from ")), "harness not imported")
    print(f"{label}: regress demo --compare exit {rc} in {time.perf_counter() - t0:.0f} s ({where})")
    if rc not in (0, 1):  # 1 is a FAIL verdict, which some demo fine-tunes are meant to get
        print(text[-3000:], file=sys.stderr)
        raise RuntimeError(f"the {label} run failed (exit {rc}); log above")
    return reports


def is_timing(key: str) -> bool:
    if TIMING_KEY.search(key.lower()):
        SKIPPED.add(key)
        return True
    return False


def _same_number(a: Any, b: Any) -> bool:
    return isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)


def json_diff(a: Any, b: Any, path: str = "$") -> list[str]:
    """JSON paths where a and b differ, in document order (ignored and timing keys skipped)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in list(a) + [k for k in b if k not in a]:
            if k in IGNORED_KEYS or is_timing(k):
                continue
            sub = f"{path}.{k}"
            if k not in b or k not in a:
                out.append(f"{sub} (only in {'reference' if k in a else 'current'})")
            else:
                out += json_diff(a[k], b[k], sub)
        return out
    if isinstance(a, list) and isinstance(b, list):
        out = [p for i, (x, y) in enumerate(zip(a, b, strict=False)) for p in json_diff(x, y, f"{path}[{i}]")]
        if len(a) != len(b):
            out.append(f"{path} (length {len(a)} vs {len(b)})")
        return out
    if type(a) is type(b) and (a == b or _same_number(a, b)):
        return []
    return [f"{path} ({json.dumps(a)[:60]} vs {json.dumps(b)[:60]})"]


def text_diff(a: str, b: str) -> str:
    if a == b:
        return "equal"
    la, lb = a.splitlines(), b.splitlines()
    i = next((i for i, (x, y) in enumerate(zip(la, lb, strict=False)) if x != y), min(len(la), len(lb)))
    return f"differs from line {i + 1}"


def parquet_diff(fa: Path, fb: Path) -> str:
    import pandas as pd

    a, b = pd.read_parquet(fa), pd.read_parquet(fb)
    a = a[[c for c in a.columns if not is_timing(str(c))]]
    b = b[[c for c in b.columns if not is_timing(str(c))]]
    if list(a.columns) != list(b.columns):
        only_a = [c for c in a.columns if c not in b.columns]
        only_b = [c for c in b.columns if c not in a.columns]
        return f"columns differ (only reference {only_a}, only current {only_b}, or order)"
    if len(a) != len(b):
        return f"rows differ ({len(a)} vs {len(b)})"
    bad = [c for c in a.columns if a[c].dtype != b[c].dtype or not a[c].equals(b[c])]
    if bad:
        return f"values or dtypes differ in {bad[:MAX_PATHS]}"
    return f"equal ({len(a)} rows x {len(a.columns)} columns)"


def _junit(f: Path) -> str:
    return re.sub(r' (time|timestamp)="[^"]*"', r' \1=""', f.read_text())


def compare_one(ra: Path, rb: Path) -> tuple[bool, str]:
    """Compare one fine-tune's report folders; (all equal, one line)."""
    if not (ra / "summary.json").is_file() or not (rb / "summary.json").is_file():
        return False, f"summary.json missing ({ra.name} reference: {ra.is_dir()}, current: {rb.is_dir()})"
    paths = json_diff(json.loads((ra / "summary.json").read_text()), json.loads((rb / "summary.json").read_text()))
    parts = ["summary.json " + ("equal" if not paths else "differs at " + "; ".join(paths[:MAX_PATHS]))]
    ok = not paths
    for name, check in (
        ("report.md", lambda a, b: text_diff(a.read_text(), b.read_text())),
        ("items.parquet", parquet_diff),
        ("junit.xml", lambda a, b: text_diff(_junit(a), _junit(b))),
    ):
        if not (ra / name).is_file() or not (rb / name).is_file():
            res = "missing"
        else:
            res = check(ra / name, rb / name)
        ok = ok and res.startswith("equal")
        parts.append(f"{name} {res}")
    return ok, " | ".join(parts)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ref", default="522fade", help="reference git ref (default: 522fade, before issue 12)")
    p.add_argument("--new", default=None, help="a git ref to compare instead of the working tree")
    p.add_argument("--limit", type=int, default=None, help="only the first N items of each task (quick check)")
    p.add_argument("--demo", default=str(REPO / ".cache" / "demo"), help="built demo checkpoints")
    p.add_argument("--keep", action="store_true", help="keep the reports and logs (the worktree is always removed)")
    a = p.parse_args(argv)
    demo = Path(a.demo).resolve()
    if not (demo / "BUILD.json").is_file() or not (demo / "base").is_dir():
        print(f"summary_equal: no built demo checkpoints in {demo}; run .venv/bin/regress demo first", file=sys.stderr)
        return 2
    shas = {}
    for ref in (a.ref, a.new or "HEAD"):
        sha = subprocess.run(["git", "rev-parse", "--short", ref], cwd=REPO, capture_output=True, text=True)
        if sha.returncode != 0:
            print(f"summary_equal: unknown git ref {ref}", file=sys.stderr)
            return 2
        shas[ref] = sha.stdout.strip()
    if a.new:
        new_what = f"{a.new} ({shas[a.new]})"
    else:
        status = ["git", "status", "--porcelain", "--untracked-files=no", "harness", "suites"]
        dirty = ", with uncommitted changes" if subprocess.run(status, cwd=REPO, capture_output=True).stdout else ""
        new_what = f"working tree (HEAD {shas['HEAD']}{dirty})"
    print(f"reference {a.ref} ({shas[a.ref]}) vs {new_what}; limit {a.limit or 'none'}; checkpoints {demo}")
    work = Path(tempfile.mkdtemp(prefix="summary-equal-"))
    tree = work / "ref-tree"
    new_tree = work / "new-tree" if a.new else REPO
    try:
        subprocess.run(["git", "worktree", "add", "--detach", "-q", str(tree), a.ref], cwd=REPO, check=True)
        if a.new:
            subprocess.run(["git", "worktree", "add", "--detach", "-q", str(new_tree), a.new], cwd=REPO, check=True)
        # the fine-tunes that have a before and an after, and a checkpoint in this build
        ref_names, cur_names = fine_tunes(tree), fine_tunes(new_tree)
        missing = [n for n in ref_names if not (demo / n).is_dir()]
        if missing:
            raise RuntimeError(f"{demo} has no checkpoint for {missing}; build the demo for the reference's fine-tunes")
        names = [n for n in ref_names if n in cur_names]
        for n in ref_names:
            if n not in cur_names:
                print(f"{n:16s} not compared: the working tree's FINE_TUNES no longer has it")
        for n in cur_names:
            if n not in ref_names:
                print(f"{n:16s} not compared: new since {a.ref} (no before)")
        ref_reports = run_side("reference", tree, demo, work, a.limit, names)
        cur_reports = run_side("current", new_tree, demo, work, a.limit, names)
        all_ok = True
        for n in names:
            ok, line = compare_one(ref_reports / f"demo-{n}", cur_reports / f"demo-{n}")
            all_ok = all_ok and ok
            print(f"{n:16s} {'equal' if ok else 'DIFFERS'}: {line}")
        print(f"ignored: regress_version; timing fields: {', '.join(sorted(SKIPPED)) or 'none found'}")
        print("all equal" if all_ok else "some outputs differ")
        return 0 if all_ok else 1
    except (RuntimeError, subprocess.CalledProcessError) as e:
        print(f"summary_equal: {e}", file=sys.stderr)
        return 2
    finally:
        for t in (tree, new_tree):
            if t != REPO:
                subprocess.run(["git", "worktree", "remove", "--force", str(t)], cwd=REPO, capture_output=True)
        if a.keep:
            print(f"reports and logs kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
