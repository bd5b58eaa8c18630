"""report.html in headless Chromium (Debian's ``/usr/bin/chromium``, driven by playwright).

Opens the page from disk (file://) and checks: no console errors, the plots and the flip
explorer are there, the filters work, a planted ``<script>`` in a model output did not
run, and a 10,000-item report opens in under 2 s. Screenshots go under the test's
tmp_path (their paths are printed; run with ``-s``).
"""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _report_fakes import HOSTILE_OUTPUTS, fake_comparison

from harness.report import write_report

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]  # fmt: skip
MAX_OPEN_S = 2.0


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).is_file():
        pytest.skip("Debian's chromium is not installed (scripts/install-browser.sh installs it)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_report(fake_comparison(600), tmp_path_factory.mktemp("browser") / "rep") / "report.html"


class Page:
    """A page with its console errors and uncaught exceptions collected."""

    def __init__(self, browser: Any, path: Path) -> None:
        self.errors: list[str] = []
        self.page = browser.new_page(viewport={"width": 1400, "height": 1000})
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(f"uncaught: {e}"))
        t0 = time.perf_counter()
        self.page.goto(path.resolve().as_uri(), wait_until="load")
        self.wall_s = time.perf_counter() - t0

    def matches(self) -> int:
        return int(self.page.get_attribute("#flip-list", "data-matches"))

    def cards(self, attr: str) -> list[str]:
        return self.page.eval_on_selector_all("article.flip", f"els => els.map(e => e.getAttribute('{attr}'))")


@pytest.fixture
def page(browser: Any, report: Path) -> Iterator[Page]:
    p = Page(browser, report)
    yield p
    p.page.close()


def _data(report: Path) -> dict:
    html = report.read_text(encoding="utf-8")
    return json.loads(re.search(r'id="flip-data">(.*?)</script>', html, re.S).group(1))


def test_loads_without_errors_with_plots_and_explorer(page: Page, report: Path, tmp_path: Path) -> None:
    pg = page.page
    assert page.errors == []
    assert pg.inner_text("#verdict").startswith("FAIL")
    plots = pg.eval_on_selector_all("#plots img", "els => els.map(e => [e.id, e.complete && e.naturalWidth])")
    assert len(plots) == 6 and all(w > 100 for _, w in plots), plots
    n = len(_data(report)["items"])
    assert page.matches() == n and 0 < len(page.cards("data-task")) <= 40
    assert pg.inner_text("#f-count").endswith(f"of {n} items")
    shot = tmp_path / "report.png"
    pg.screenshot(path=str(shot), full_page=True)
    print(f"\nscreenshot: {shot}")


def _text(segs: list) -> str:
    return "".join(s[1] for s in segs if s[0] < 2)


def test_planted_script_did_not_run(page: Page, report: Path) -> None:
    pg = page.page
    items = _data(report)["items"]
    hits = sum(1 for it in items if "__pwned" in it["id"] + "".join(_text(it[k]) for k in "pgbc"))
    assert hits >= 4
    pg.fill("#f-q", "__PWNED")  # search is case-insensitive
    # a function, not a string: the page's CSP forbids eval, which would run a string
    pg.wait_for_function(
        "(n) => document.getElementById('flip-list').getAttribute('data-matches') === n", arg=str(hits)
    )
    assert pg.evaluate("window.__pwned") is None
    assert pg.evaluate("document.scripts.length") == 2
    assert pg.query_selector("img[src=x], img[src=y], svg") is None
    texts = pg.eval_on_selector_all("article.flip .pane.c pre", "els => els.map(e => e.textContent)")
    assert HOSTILE_OUTPUTS[0] in texts and HOSTILE_OUTPUTS[1] in texts and HOSTILE_OUTPUTS[2] in texts
    assert page.errors == []


def test_filters(page: Page, report: Path) -> None:
    pg, items = page.page, _data(report)["items"]
    tasks = _data(report)["tasks"]
    rev = tasks.index("demo_rev")
    pg.select_option("#f-task", str(rev))
    want = [it for it in items if it["t"] == rev]
    assert page.matches() == len(want) > 0
    assert set(page.cards("data-task")) == {"demo_rev"}

    pg.select_option("#f-kind", "neg")
    want = [it for it in want if it["k"] == "neg"]
    assert page.matches() == len(want) > 0 and set(page.cards("data-kind")) == {"neg"}

    pg.check("#f-loops")
    assert page.matches() == sum(1 for it in want if it["lp"])
    assert pg.locator("article.flip .loop .unit").count() >= min(1, page.matches())

    pg.select_option("#f-task", "-1")
    pg.select_option("#f-kind", "pos")
    pg.uncheck("#f-loops")
    assert page.matches() == sum(1 for it in items if it["k"] == "pos")
    assert set(page.cards("data-kind")) == {"pos"}

    pg.select_option("#f-kind", "")
    pg.click('a.task-link[data-task="demo_sort"]')  # the task table drives the filter
    assert set(page.cards("data-task")) == {"demo_sort"}
    assert page.matches() == sum(1 for it in items if tasks[it["t"]] == "demo_sort")
    assert page.errors == []


def test_pages_and_divergence_marks(page: Page) -> None:
    pg = page.page
    first = pg.get_attribute("article.flip", "data-task"), pg.inner_text("article.flip .iid")
    pg.click("#f-next")
    assert pg.inner_text("#f-page").startswith("page 2 of")
    assert (pg.get_attribute("article.flip", "data-task"), pg.inner_text("article.flip .iid")) != first
    assert pg.locator("article.flip .dv0").count() > 0
    assert page.errors == []


def test_10k_items_open_under_2s(browser: Any, tmp_path: Path) -> None:
    report = write_report(fake_comparison(10_000), tmp_path / "rep") / "report.html"
    size = report.stat().st_size
    p = Page(browser, report)
    nav = p.page.evaluate("performance.getEntriesByType('navigation')[0].toJSON()")
    load_s = nav["loadEventEnd"] / 1000
    print(f"\n10,000-item report: {size / 1e6:.2f} MB, load event at {load_s:.3f} s "
          f"(goto wall {p.wall_s:.3f} s), {p.matches()} explorer items")  # fmt: skip
    assert p.errors == []
    assert p.matches() > 1000
    shot = tmp_path / "report-10k.png"
    p.page.screenshot(path=str(shot))
    print(f"screenshot: {shot}")
    assert size < 5_000_000
    assert load_s < MAX_OPEN_S and p.wall_s < MAX_OPEN_S
    p.page.close()
