"""report.html without a browser: structure, escaping of hostile outputs, size budget.

Synthetic comparisons (``_report_fakes``) go through the real compare, gate and
``write_report``; no model runs.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from pathlib import Path

import pandas as pd
import pytest
from _report_fakes import HOSTILE_ID, HOSTILE_OUTPUTS, PWN, fake_comparison

from harness.report import write_report
from harness.report.html import (
    DATA_BUDGET,
    clean,
    common_prefix,
    explorer_data,
    output_segments,
    pieces,
    script_json,
)

MAX_BYTES = 5_000_000
_DATA = re.compile(r'<script type="application/json" id="flip-data">(.*?)</script>', re.S)


def page_data(html: str) -> dict:
    m = _DATA.search(html)
    assert m, "no flip-data block"
    return json.loads(m.group(1))


def seg_text(segs: list) -> str:
    return "".join(s[1] for s in segs if s[0] < 2)


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = write_report(fake_comparison(600), tmp_path_factory.mktemp("r") / "rep")
    raw = (out / "report.html").read_bytes()
    return out, raw.decode("utf-8")  # strict: the page is valid UTF-8


def test_folder_and_self_contained(report: tuple[Path, str]) -> None:
    out, html = report
    for name in ("report.html", "report.md", "summary.json", "items.parquet", "junit.xml"):
        assert (out / name).is_file(), name
    assert not re.search(r"<(link|iframe|object|embed)\b", html, re.I)
    assert not re.search(r"""\b(src|href)\s*=\s*["']?(https?:|//)""", html, re.I)
    srcs = re.findall(r'<img [^>]*src="([^"]*)"', html)
    assert len(srcs) == 6 and all(s.startswith("data:image/png;base64,") for s in srcs)
    for pid in ("plot-accuracy", "plot-flips", "plot-causes", "plot-lengths", "plot-degeneration", "plot-stop-drift"):
        assert f'id="{pid}"' in html


def test_verdict_banner_and_task_table(report: tuple[Path, str]) -> None:
    _, html = report
    assert '<header class="banner FAIL" id="verdict">' in html
    assert 'id="reasons"' in html and "acc_drop" in html
    table = html[html.index('<table id="tasks">') : html.index("</table>")]
    for task in ("demo_add", "demo_rev", "demo_sort", "demo_cmp", "demo_sub", "overall"):
        assert f">{task}<" in table
    assert "stop drift" in table and "answer drift" in table  # optional columns, present here
    assert "[0." in table  # Wilson intervals


def test_causes_in_the_explorer_and_summary(report: tuple[Path, str]) -> None:
    """Every negative flip carries its cause (harness/causes.py) to the explorer, whose
    cause filter lists them; summary.json counts them per task and overall."""
    out, html = report
    data = page_data(html)
    neg = [it for it in data["items"] if it["k"] == "neg"]
    assert neg and all(it["cs"] for it in neg)
    assert all(it["cs"] == "" for it in data["items"] if it["k"] != "neg")
    assert 'id="f-cause"' in html
    summary = json.loads((out / "summary.json").read_text())
    overall = summary["causes"]["overall"]
    assert sum(overall.values()) == summary["overall"]["negative_flips"]
    assert sum(sum(n.values()) for n in summary["causes"]["tasks"].values()) == sum(overall.values())
    assert set(summary["causes"]["remedies"]) == set(overall)
    items = pd.read_parquet(out / "items.parquet")
    assert ((items["cause"] != "") == (items["flip"] == "neg")).all()


def test_drift_columns_and_plot_are_optional(tmp_path: Path) -> None:
    out = write_report(fake_comparison(100, hostile=False, drift=False), tmp_path / "rep")
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "stop drift" not in html and 'id="plot-stop-drift"' not in html
    assert 'id="plot-accuracy"' in html


def test_multiple_choice_only_suite(tmp_path: Path) -> None:
    out = write_report(fake_comparison(60, hostile=False, tasks=("demo_cmp",)), tmp_path / "rep")
    html = (out / "report.html").read_text(encoding="utf-8")
    assert 'id="plot-lengths"' not in html and 'id="plot-degeneration"' not in html
    assert page_data(html)["tasks"] == ["demo_cmp"]


def test_only_our_two_scripts_and_csp_pins_them(report: tuple[Path, str]) -> None:
    _, html = report
    assert len(re.findall(r"<script\b", html, re.I)) == 2
    assert len(re.findall(r"</script", html, re.I)) == 2
    csp = re.search(r'http-equiv="Content-Security-Policy" content="([^"]*)"', html).group(1)
    assert "default-src 'none'" in csp and "unsafe-inline" not in csp
    js = re.search(r"<script>(.*?)</script>", html, re.S).group(1)
    digest = base64.b64encode(hashlib.sha256(js.encode()).digest()).decode()
    assert f"script-src 'sha256-{digest}'" in csp


def test_planted_markup_is_escaped(report: tuple[Path, str]) -> None:
    _, html = report
    assert PWN not in html.replace(f"{PWN}=", "")  # only inside escaped data
    for planted in ("<script>window", "<img src=x", "<img src=y", "<svg onload", "<b>tokens</b>", "<i>ok</i>"):
        assert planted not in html, planted
    assert "ft-all-&lt;b&gt;tokens&lt;/b&gt;" in html  # server-side text: autoescaped
    data = page_data(html)
    outputs = [seg_text(it["c"]) for it in data["items"]]
    assert HOSTILE_OUTPUTS[0] in outputs and HOSTILE_OUTPUTS[1] in outputs and HOSTILE_OUTPUTS[2] in outputs
    assert any(it["id"] == clean(HOSTILE_ID) for it in data["items"])


def test_hostile_characters_are_inert(report: tuple[Path, str]) -> None:
    _, html = report
    for ch in ("\x00", "\x1b", "\x7f", "\x85", "\u202e", "\u2028", "\u2029"):
        assert ch not in html, repr(ch)
    items = page_data(html)["items"]
    chips = {s[1] for it in items for s in it["c"] + it["g"] if s[0] == 3}
    assert {"ESC", "NUL", "DEL", "U+0085", "U+202E", "U+D800", "U+DCFF", "U+DC80"} <= chips


def test_megabyte_line_is_cut_with_a_note(report: tuple[Path, str]) -> None:
    out, html = report
    items = page_data(html)["items"]
    big = next(it for it in items if it["lp"] and it["lp"]["n"] == 1_000_000)
    gaps = [s[1] for s in big["c"] if s[0] == 2]
    assert gaps and sum(gaps) + len(seg_text(big["c"])) == 1_000_000
    assert big["lp"]["u"] == "x"
    assert (out / "report.html").stat().st_size < 1_000_000


def test_every_negative_flip_and_seeded_samples(report: tuple[Path, str]) -> None:
    out, html = report
    data = page_data(html)
    kinds = [it["k"] for it in data["items"]]
    assert kinds.count("neg") > 0 and kinds.count("pos") > 0 and kinds.count("chg") > 0
    note = re.search(r'id="explorer-note">(.*?)</p>', html, re.S).group(1)
    n_neg = kinds.count("neg")
    assert f"{n_neg} of {n_neg} negative flips" in note
    assert any(it["lp"] for it in data["items"])  # loops reach the explorer
    again = write_report(fake_comparison(600), out.parent / "again")
    assert page_data((again / "report.html").read_text(encoding="utf-8")) == data  # seeded


@pytest.mark.parametrize(
    ("a", "b", "n"),
    [
        ("", "", 0),
        ("abc", "abc", 3),
        ("abc", "abd", 2),
        ("ab", "abc", 2),
        ("x", "y", 0),
        ("a" * 10**6, "a" * 10**6 + "b", 10**6),
    ],
)
def test_common_prefix(a: str, b: str, n: int) -> None:
    assert common_prefix(a, b) == n == common_prefix(b, a)


@pytest.mark.parametrize("cap", [10, 50, 4000])
def test_output_segments_mark_divergence_and_account_for_cuts(cap: int) -> None:
    a, b = "shared prefix " * 20 + "then base", "shared prefix " * 20 + "and the candidate " * 30
    div = common_prefix(a, b)
    for text in (a, b):
        segs = output_segments(text, div, cap)
        shown = sum(len(s[1]) for s in segs if s[0] < 2) + sum(s[1] for s in segs if s[0] == 2)
        assert shown == len(text)
        assert sum(len(s[1]) for s in segs if s[0] < 2) <= cap
        diverged = [s for s in segs if s[0] == 1]
        assert diverged and text[div:].startswith(diverged[0][1])


def test_pieces_and_clean() -> None:
    assert pieces("a\x00\x00b\x1b[0m", 1) == [[1, "a"], [3, "NUL", 1, 2], [1, "b"], [3, "ESC", 1, 1], [1, "[0m"]]
    assert pieces("\ud800", 0) == [[3, "U+D800", 0, 1]]
    assert clean("x\x00\u202ey") == "x⟨NUL⟩⟨U+202E⟩y"
    assert clean(None) == "" and clean(float("nan")) == ""


def test_script_json_cannot_close_the_tag() -> None:
    text = script_json({"s": "</script><!-- & \u2028\u2029 >"})
    assert not re.search("[<>&\u2028\u2029]", text)
    assert json.loads(text) == {"s": "</script><!-- & \u2028\u2029 >"}


def _size(tmp_path: Path, cmp) -> int:  # type: ignore[no-untyped-def]
    out = write_report(cmp, tmp_path / "rep")
    size = (out / "report.html").stat().st_size
    print(f"\n10,000-item report.html: {size / 1e6:.2f} MB ({tmp_path / 'rep' / 'report.html'})")
    return size


def test_10k_items_under_5mb(tmp_path: Path) -> None:
    assert _size(tmp_path, fake_comparison(10_000)) < MAX_BYTES


def test_10k_long_looping_outputs_under_5mb(tmp_path: Path) -> None:
    cmp = fake_comparison(10_000, out_len=4000)  # loops run to 4,000 characters
    assert _size(tmp_path, cmp) < MAX_BYTES


def test_budget_holds_when_every_item_is_a_long_negative_flip() -> None:
    cmp = fake_comparison(10_000, hostile=False)
    items = cmp.items.copy()
    items["flip"] = "neg"
    items["output_cand"] = [f"<{i}> \x00 " * 600 for i in range(len(items))]
    text, notes = explorer_data(items, ["demo_add", "demo_rev", "demo_sort", "demo_cmp", "demo_sub"])
    assert len(text.encode()) <= DATA_BUDGET and notes["bytes"] <= DATA_BUDGET
    assert 0 < notes["shown"]["neg"] < notes["total"]["neg"] == 10_000
    assert len(json.loads(text)["items"]) == notes["shown"]["neg"]
