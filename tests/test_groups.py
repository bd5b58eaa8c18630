"""Groups and several metrics on the compare/gate/report side, on a hand-built test store.

A suite of lm-eval's shape, no model: three MMLU-like subjects of one group ``mmlu_like``
(multiple choice, metric ``acc,none``) and one standalone GSM8K-like task with two filters
(``exact_match,strict-match`` first, as lm-eval lists it, and ``exact_match,flexible-extract``,
which the suite names as the gate metric). Base and candidate ``Record``s are made by hand
with a little symmetric churn; one subject has a planted drop. The real pipeline stages run
on them (``pipeline.comparison_of``, ``report.write_report``, ``pipeline.rejudge``).
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import replace
from pathlib import Path

import jsonschema
import pandas as pd
import pytest

from harness import compare, gate, pipeline, stats
from harness.report import write_report
from harness.report.summary import schema
from harness.types import Checkpoint, Comparison, Record, RunResult, Suite, TaskSpec

GROUP = "mmlu_like"
SUBJECTS = ("mmlu_like_anatomy", "mmlu_like_geography", "mmlu_like_law")
PLANTED = "mmlu_like_geography"
GSM = "gsm_like"
STRICT, FLEX = "exact_match,strict-match", "exact_match,flexible-extract"
N = 100  # items per task


def _h(*parts: object) -> str:
    return hashlib.sha256("\x1f".join(map(str, parts)).encode()).hexdigest()[:16]


def suite() -> Suite:
    tasks = (
        *(TaskSpec(s, {"output_type": "multiple_choice"}, "lm-eval registry", group=GROUP) for s in SUBJECTS),
        TaskSpec(GSM, {"output_type": "generate_until"}, "lm-eval registry", gate_metric=FLEX),
    )
    return Suite("grouped", "suites/grouped.yaml", "1", tasks, False, "hash-grouped")


def _mc(task: str, i: int, right: bool) -> Record:
    return Record(
        task=task, item_id=f"{i:04d}", item_hash=_h(task, i), prompt_hash=_h("prompt", task, i),
        prompt=f"Question {i} of {task}?\nA. yes\nB. no\nAnswer:", target="A", output="A" if right else "B",
        answer="A" if right else "B", score=float(right), metric="acc,none", kind="multiple_choice",
        metrics={"acc,none": float(right)},
    )  # fmt: skip


def _gen(i: int, strict: bool, flex: bool) -> Record:
    out = f"The answer is {i}." if strict else (f"so {i}" if flex else "no idea")
    return Record(
        task=GSM, item_id=f"{i:04d}", item_hash=_h(GSM, i), prompt_hash=_h("prompt", GSM, i),
        prompt=f"Q: what is {i}?\nA:", target=str(i), output=out, answer=str(i) if flex else "[invalid]",
        score=float(strict), metric=STRICT, kind="generate_until", finish="eos", n_tokens=len(out),
        metrics={STRICT: float(strict), FLEX: float(flex)},
    )  # fmt: skip


def records(planted: float = 0.0, churn: float = 0.04, seed: int = 0) -> tuple[list[Record], list[Record]]:
    """Base and candidate records; the candidate gets ``planted`` of PLANTED's right answers wrong."""
    rng = random.Random(seed)
    base: list[Record] = []
    cand: list[Record] = []
    for task in SUBJECTS:
        for i in range(N):
            right = rng.random() < 0.7
            now = right != (rng.random() < churn)
            if task == PLANTED and right and rng.random() < planted:
                now = False
            base.append(_mc(task, i, right))
            cand.append(_mc(task, i, now))
    for i in range(N):
        flex = rng.random() < 0.8
        strict = flex and rng.random() < 0.6  # strict-match finds the answer less often
        base.append(_gen(i, strict, flex))
        cand.append(_gen(i, strict, flex))
    return base, cand


def comparison(base: list[Record], cand: list[Record], policy: gate.Policy | None = None) -> Comparison:
    def run(path: str, recs: list[Record]) -> RunResult:
        return RunResult(Checkpoint(path, f"fp-{path}"), tuple(recs), "store", True, 0)

    return pipeline.comparison_of(run("base", base), run("cand", cand), suite(), "hf", policy or gate.Policy())


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Comparison, Path]:
    cmp = comparison(*records(planted=0.5))
    return cmp, write_report(cmp, tmp_path_factory.mktemp("groups") / "report")


def _fired(results: object) -> set[tuple[str, str]]:
    return {(r["task"], r["rule"]) for r in results if r["fired"]}  # type: ignore[attr-defined]


def test_group_row_pools_its_subjects_items(planted: tuple[Comparison, Path]) -> None:
    cmp, out = planted
    summary = json.loads((out / "summary.json").read_text())
    (group,) = summary["groups"]
    assert group["name"] == GROUP and group["subtasks"] == list(SUBJECTS)
    subs = [t for t in summary["tasks"] if t["name"] in SUBJECTS]
    assert [t["group"] for t in subs] == [GROUP] * 3
    assert group["n"] == sum(t["n"] for t in subs) == 3 * N
    items = pd.read_parquet(out / "items.parquet")
    pooled = items[items["group"] == GROUP]
    assert group["acc_base"] == pytest.approx(pooled["correct_base"].mean())
    assert group["acc_candidate"] == pytest.approx(pooled["correct_cand"].mean())
    assert group["negative_flips"] == int((pooled["flip"] == "neg").sum())
    # the per-task list is unchanged in shape: every task once, the standalone one without a group
    assert [t["name"] for t in summary["tasks"]] == [*SUBJECTS, GSM]
    assert "group" not in summary["tasks"][-1] and "subtasks" not in summary["tasks"][-1]
    jsonschema.validate(summary, schema())


def test_planted_subject_is_a_flagged_subtask(planted: tuple[Comparison, Path]) -> None:
    cmp, out = planted
    summary = json.loads((out / "summary.json").read_text())
    assert summary["verdict"] == "FAIL"
    fired = _fired(summary["rules"])
    assert (PLANTED, "subtask_collapse") in fired
    assert {(s, "subtask_collapse") for s in SUBJECTS if s != PLANTED}.isdisjoint(fired)
    assert any(r.startswith(f"[FAIL] {PLANTED} subtask_collapse: subtask of {GROUP}") for r in summary["reasons"])
    # subtasks get only the collapse rule; the group gets the task rules on its pooled row
    rules_of = {(r["task"], r["rule"]) for r in summary["rules"]}
    assert {rule for task, rule in rules_of if task in SUBJECTS} == {"subtask_collapse"}
    assert {"acc_drop", "negative_flips", "inconclusive"} <= {rule for task, rule in rules_of if task == GROUP}
    assert (GSM, "subtask_collapse") not in rules_of


def test_holm_counts_the_group_once(planted: tuple[Comparison, Path]) -> None:
    cmp, _ = planted
    rows = {t.name: t for t in (*cmp.tasks, *cmp.groups)}
    p = {name: gate.p_drop(rows[name].negative_flips, rows[name].positive_flips) for name in (GSM, GROUP)}
    units = dict(zip(p, stats.holm(list(p.values()))))  # two gated units, not four tasks
    outcome = {(r.task, r.rule): r for r in cmp.verdict.results}
    assert outcome[(GROUP, "acc_drop")].p_value == pytest.approx(units[GROUP])
    assert outcome[(GSM, "acc_drop")].p_value == pytest.approx(units[GSM])
    within = stats.holm([gate.p_drop(rows[s].negative_flips, rows[s].positive_flips) for s in SUBJECTS])
    for s, q in zip(SUBJECTS, within):  # the collapse rule's own family: the group's subtasks
        assert outcome[(s, "subtask_collapse")].p_value == pytest.approx(q)
    # compare's two-sided McNemar p follows the same families
    two = stats.holm([rows[GSM].mcnemar_p, rows[GROUP].mcnemar_p])
    assert (rows[GSM].mcnemar_p_holm, rows[GROUP].mcnemar_p_holm) == pytest.approx(two)


def test_gate_metric_scores_and_every_metric_is_kept(planted: tuple[Comparison, Path]) -> None:
    cmp, out = planted
    base, _ = records(planted=0.5)
    gsm = [r for r in base if r.task == GSM]
    row = next(t for t in cmp.tasks if t.name == GSM)
    assert row.acc_base == pytest.approx(sum(r.metrics[FLEX] for r in gsm) / N)  # not strict-match's
    assert row.acc_base > sum(r.score for r in gsm) / N
    summary = json.loads((out / "summary.json").read_text())
    metric = {t["name"]: t.get("metric") for t in [*summary["tasks"], *summary["groups"]]}
    assert metric == {**dict.fromkeys(SUBJECTS, "acc,none"), GROUP: "acc,none", GSM: FLEX}
    items = pd.read_parquet(out / "items.parquet")
    g = items[items["task"] == GSM]
    assert set(g["metric"]) == {FLEX}
    both = [json.loads(m) for m in g["metrics_base"]]
    assert all(set(m) == {STRICT, FLEX} for m in both)
    assert [m[FLEX] for m in both] == list(g["score_base"])
    assert any(m[STRICT] != m[FLEX] for m in both)  # side by side, and they differ
    assert items["group"].isna().sum() == N  # standalone items have no group


def test_gate_metric_missing_from_records_is_one_line() -> None:
    base, cand = records()
    base = [replace(r, metrics={STRICT: r.score}) if r.task == GSM else r for r in base]
    with pytest.raises(compare.CompareError, match=f"gate metric '{FLEX}' is not among"):
        comparison(base, cand)


def test_no_change_candidate_passes(tmp_path: Path) -> None:
    base, _ = records()
    cmp = comparison(base, list(base))
    assert cmp.verdict.level == "PASS", cmp.verdict.reasons
    assert [g.name for g in cmp.groups] == [GROUP]
    assert any(r.rule == "subtask_collapse" and not r.fired for r in cmp.verdict.results)
    jsonschema.validate(json.loads((write_report(cmp, tmp_path / "r") / "summary.json").read_text()), schema())


def test_rejudge_rebuilds_groups_and_reproduces_the_verdict(planted: tuple[Comparison, Path], tmp_path: Path) -> None:
    cmp, out = planted
    stored = json.loads((out / "summary.json").read_text())
    copy = tmp_path / "report"
    copy.mkdir()
    for f in out.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    again, _ = pipeline.rejudge(str(copy), None)
    assert again.groups == cmp.groups and again.tasks == cmp.tasks
    assert again.verdict == cmp.verdict
    rejudged = json.loads((copy / "summary.json").read_text())
    drop = ("regress_version",)
    assert {k: v for k, v in rejudged.items() if k not in drop} == {k: v for k, v in stored.items() if k not in drop}


def test_severity_and_threshold_of_the_collapse_rule() -> None:
    base, cand = records(planted=0.5)
    warn = gate.parse_policy({"severity": {"subtask_collapse": "WARN"}})
    outcome = {(r.task, r.rule): r for r in comparison(base, cand, warn).verdict.results}
    assert outcome[(PLANTED, "subtask_collapse")].severity == "WARN" and outcome[(PLANTED, "subtask_collapse")].fired
    off = gate.parse_policy({"severity": {"subtask_collapse": "off"}})
    assert not [r for r in comparison(base, cand, off).verdict.results if r.rule == "subtask_collapse"]
    # the group's setting reaches its subtasks; a subtask's own setting beats it
    lenient = gate.parse_policy({"tasks": {GROUP: {"max_subtask_drop": 0.6}}})
    fired = {(r.task, r.rule) for r in comparison(base, cand, lenient).verdict.results if r.fired}
    assert (PLANTED, "subtask_collapse") not in fired
    own = gate.parse_policy({"tasks": {GROUP: {"max_subtask_drop": 0.6}, PLANTED: {"max_subtask_drop": 0.1}}})
    assert (PLANTED, "subtask_collapse") in {(r.task, r.rule) for r in comparison(base, cand, own).verdict.results
                                              if r.fired}  # fmt: skip
    with pytest.raises(gate.PolicyError, match="max_subtask_drop"):
        gate.parse_policy({"max_subtask_drop": 2})


def test_small_drop_in_a_subject_is_not_a_collapse() -> None:
    """A subject that lost a few items (under the 10-point floor) is not flagged."""
    cmp = comparison(*records(planted=0.08))
    row = next(t for t in cmp.tasks if t.name == PLANTED)
    assert -row.delta < 0.10
    assert not any(r.fired for r in cmp.verdict.results if r.rule == "subtask_collapse")


def test_report_folds_subtasks_under_the_group(planted: tuple[Comparison, Path]) -> None:
    _, out = planted
    html = (out / "report.html").read_text()
    table = html[html.index('<table id="tasks">') : html.index('<details id="checks">')]
    group_row = table.index(f'data-task="{GROUP}"')
    block = table.index(f'<details class="subtasks" data-group="{GROUP}" open>')
    assert group_row < block  # the group's row, then its subtasks folded under it
    assert "group of 3, pooled" in table[group_row:block]
    nested = table[block : table.index("</details>", block)]
    assert "1 flagged" in nested
    assert all(f'data-task="{s}"' in nested for s in SUBJECTS)
    assert f'data-task="{GSM}"' not in nested and f'data-task="{GSM}"' in table
    assert f"<code>{FLEX}</code>" in table and "<code>acc,none</code>" in table  # the gating metric is named
    data = json.loads(html[html.index('id="flip-data">') + len('id="flip-data">') : html.index("</script>")])
    assert data["tasks"] == [*SUBJECTS, GSM]  # the explorer's task filter: every task, and the group
    assert data["groups"] == [[GROUP, [0, 1, 2]]]
    md = (out / "report.md").read_text()
    assert f"`{GROUP}` (group of 3)" in md and "| metric |" in md and f"`{FLEX}`" in md
    sub_lines = [line for line in md.splitlines() if line.startswith("| ↳")]
    assert any(f"`{PLANTED}`" in line for line in sub_lines)
    assert any("2 more subtasks" in line for line in sub_lines)
    lines = md.splitlines()
    start = lines.index(next(line for line in lines if line.startswith("| task | metric |")))
    end = lines.index("", start)
    cells = {line.replace("\\|", "").count("|") for line in lines[start:end]}
    assert cells == {13}  # every row of the task table, sub-rows included, has the header's 12 cells


def test_suite_without_groups_keeps_its_shape() -> None:
    """No suite, one metric per item: no group or metrics columns, no group rows, no metric named."""
    base, cand = records(planted=0.5)
    plain = [replace(r, metrics={r.metric: r.score}) for r in base if r.task != GSM]
    plain_c = [replace(r, metrics={r.metric: r.score}) for r in cand if r.task != GSM]
    items, _ = compare.pair(plain, plain_c)
    assert list(items.columns) == list(compare.item_columns())
    tasks, groups, overall = compare.tables(items)
    assert groups == () and all(t.group is None and t.metric is None for t in tasks)
    assert compare.task_table(items) == (tasks, overall)
    assert all(set(t.to_dict()) == set(overall.to_dict()) for t in tasks)
    assert "group" not in tasks[0].to_dict() and "metric" not in tasks[0].to_dict()


def test_units_and_trend_show_the_group_as_one_column(planted: tuple[Comparison, Path]) -> None:
    from harness.trend import points_of

    cmp, _ = planted
    assert [u.name for u in cmp.units] == [GROUP, GSM]  # suite order: the group where its first subject stands
    (point,), _ = points_of(["ckpt/step-100"], [cmp])
    assert [t.name for t in point.tasks] == [GROUP, GSM]
    plain = replace(cmp, groups=())
    assert plain.units == plain.tasks


@pytest.mark.browser
def test_explorer_filters_by_group_and_subtask_in_chromium(planted: tuple[Comparison, Path]) -> None:
    """In headless Chromium: the group's subtasks are folded (open: one is flagged), the task
    filter offers the group, and the group's and a subtask's links filter the explorer."""
    import shutil

    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(chromium).is_file():
        pytest.skip("Debian's chromium is not installed (scripts/install-browser.sh installs it)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    _, out = planted
    html = out / "report.html"
    text = html.read_text()
    data = json.loads(text[text.index('id="flip-data">') + len('id="flip-data">') :].split("</script>")[0])
    in_group = sum(1 for it in data["items"] if data["tasks"][it["t"]] in SUBJECTS)
    in_planted = sum(1 for it in data["items"] if data["tasks"][it["t"]] == PLANTED)
    assert 0 < in_planted < in_group
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page()
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(html.resolve().as_uri(), wait_until="load")

        def matches() -> int:
            return int(page.get_attribute("#flip-list", "data-matches") or -1)

        assert page.is_visible(f'details.subtasks[data-group="{GROUP}"] a.task-link[data-task="{PLANTED}"]')
        page.select_option("#f-task", "g0")
        assert matches() == in_group
        page.select_option("#f-task", "-1")
        page.click(f'#tasks > tbody > tr a.task-link[data-task="{GROUP}"]')
        assert page.input_value("#f-task") == "g0" and matches() == in_group
        page.click(f'a.task-link[data-task="{PLANTED}"]')
        assert matches() == in_planted
        assert set(page.eval_on_selector_all("article.flip", "els => els.map(e => e.dataset.task)")) == {PLANTED}
        browser.close()
    assert errors == []
