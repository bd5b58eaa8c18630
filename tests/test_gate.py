"""The gate: policy parsing and layering, each rule on a table of cases, the statistics the
rules use against scipy, and ``regress gate REPORT_DIR`` (re-judging stored items: exit
codes, --strict, --policy, malformed policies) without any model.

``make_comparison`` builds a ``Comparison`` straight from per-task 2x2 cell counts (no
records, no model), vectorised, so 100k items take a moment; test_ci_outputs uses it too.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from harness import compare, gate, registry, stats
from harness.cli import main
from harness.errors import PolicyError
from harness.types import Checkpoint, Comparison, DetectorRate, ProbeRow, TaskRow, TerminationStats

# -- a comparison from cell counts ----------------------------------------------------


def items_frame(spec: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """Item frame (``compare.item_columns()``) from, per task: ``cells`` = (both, neg, pos,
    neither) and optionally ``nonterm`` = (base count, candidate count) of items that ran to
    the token limit (the candidate's also loop), ``changed`` = how many of the agreeing
    items still changed their output text."""
    frames = []
    for task, s in spec.items():
        both, neg, pos, neither = s["cells"]
        n = both + neg + pos + neither
        cb = np.repeat([True, True, False, False], [both, neg, pos, neither])
        cc = np.repeat([True, False, True, False], [both, neg, pos, neither])
        nb_k, nc_k = s.get("nonterm", (0, 0))
        nb, nc = np.zeros(n, bool), np.zeros(n, bool)
        wrong_b, wrong_c = np.flatnonzero(~cb), np.flatnonzero(~cc)
        nb[wrong_b[:nb_k]], nc[wrong_c[::-1][:nc_k]] = True, True
        ids = np.array([f"{i:06d}" for i in range(n)], dtype=object)
        target = np.array([f"a{i}" for i in range(n)], dtype=object)
        out_b = np.where(cb, target, "wrong")
        out_c = np.where(cc, target, np.where(nc, "loop loop loop loop", "wrong"))
        changed = np.zeros(n, bool)
        changed[: s.get("changed", 0)] = True
        out_c = np.where(changed & (cb == cc), out_c + " (rephrased)", out_c)
        frames.append(
            pd.DataFrame(
                {
                    "task": task,
                    "item_id": ids,
                    "kind": "generate_until",
                    "metric": "exact_match",
                    "prompt": "Q" + ids,
                    "target": target,
                    "output_base": out_b,
                    "output_cand": out_c,
                    "answer_base": np.where(cb, target, "wrong"),
                    "answer_cand": np.where(cc, target, "wrong"),
                    "score_base": cb.astype(float),
                    "score_cand": cc.astype(float),
                    "correct_base": cb,
                    "correct_cand": cc,
                    "finish_base": np.where(nb, "length", "eos"),
                    "finish_cand": np.where(nc, "length", "eos"),
                    "ntok_base": np.where(nb, 64, 4),
                    "ntok_cand": np.where(nc, 64, 4),
                    "identical": out_b == out_c,
                    "answer_changed": cb != cc,
                    "flip": np.where(cb & ~cc, "neg", np.where(~cb & cc, "pos", "")),
                    "nonterm_base": nb,
                    "nonterm_cand": nc,
                    "loop_base": np.zeros(n, bool),
                    "loop_cand": nc,
                    "loop_unit_cand": np.where(nc, "loop", ""),
                    "loop_repeats_cand": np.where(nc, 4.0, 0.0),
                    "loop_start_cand": np.where(nc, 0, -1),
                }
            )  # fmt: skip
        )
    return compare.add_flags(pd.concat(frames, ignore_index=True))[list(compare.item_columns())]


def make_comparison(spec: dict[str, dict[str, Any]], policy: gate.Policy | None = None) -> Comparison:
    policy = policy or gate.Policy()
    items = items_frame(spec)
    tasks, overall = compare.task_table(items)
    return Comparison(
        Checkpoint("ckpt/base", "fp-base"), Checkpoint("ckpt/cand", "fp-cand"), "synthetic", "hash0", "hf",
        items, tasks, overall, gate.judge(tasks, policy), policy,
    )  # fmt: skip


def row(name: str, cells: tuple[int, int, int, int], **extra: Any) -> TaskRow:
    """One task row as compare.task_table makes it from the 2x2 ``cells`` (both, neg, pos,
    neither) of items that all agree in output unless they flipped, with ``extra`` fields set
    (a detector's rates as summary.json names them: ``nonterm_rate_candidate=0.05``)."""
    rates = {d.name: [0.0, 0.0] for d in registry.detectors()}
    for key in list(extra):
        for suffix, side in (("_rate_base", 0), ("_rate_candidate", 1)):
            if key.endswith(suffix) and key[: -len(suffix)] in rates:
                rates[key[: -len(suffix)]][side] = extra.pop(key)
    both, neg, pos, neither = cells
    base = np.repeat([1, 1, 0, 0], cells)
    cand = np.repeat([1, 0, 1, 0], cells)
    n = both + neg + pos + neither
    s = stats.paired_summary(base, cand)
    r = TaskRow(
        name=name, **s,  # type: ignore[arg-type]
        mcnemar_p_holm=s["mcnemar_p"], identical_outputs=both + neither,
        identity_rate=(both + neither) / n if n else 1.0, answer_change_rate=(neg + pos) / n if n else 0.0,
        n_generated=0, length_ratio=1.0,
    )  # fmt: skip
    r = replace(r, **extra)
    return replace(r, rates=tuple(DetectorRate(name, b, c, r.n_generated) for name, (b, c) in rates.items()))


def probe_row(n: int, nonterm: float, loops: float) -> ProbeRow:
    """A termination-probe row of ``n`` generations: the base always stops, the candidate
    runs to the limit on ``nonterm`` of them and loops on ``loops`` of them."""

    def term(nonterm: float, loops: float) -> TerminationStats:
        return TerminationStats(n, 1 - nonterm, nonterm, loops, 5.0, 64.0 if nonterm else 5.0, 64.0, ())

    return ProbeRow(name="probe:termination", n=n, n_generated=n,
                    nonterm_rate_base=0.0, nonterm_rate_candidate=nonterm, loop_rate_base=0.0,
                    loop_rate_candidate=loops, base=term(0.0, 0.0), candidate=term(nonterm, loops))  # fmt: skip


def fired(verdict: gate.Verdict) -> set[tuple[str, str]]:
    return {(r.task, r.rule) for r in verdict.results if r.fired}


# -- policy parsing -------------------------------------------------------------------


def test_defaults_in_code() -> None:
    p = gate.Policy()
    assert p.for_task("anything") == gate.Thresholds()
    assert p.severity == gate.DEFAULT_SEVERITY
    assert gate.parse_policy(None) == p
    assert gate.parse_policy({}) == p


def test_layers_and_per_task_precedence() -> None:
    suite = gate.parse_policy(
        {"max_acc_drop": 0.02, "tasks": {"a": {"max_acc_drop": 0.05}}, "severity": {"identity": "FAIL"}}
    )
    final = gate.parse_policy({"max_acc_drop": 0.03, "alpha": 0.01, "tasks": {"b": {"min_identity_rate": 0.9}}}, suite)
    assert final.for_task("a").max_acc_drop == 0.05  # a task's own setting beats a later global one
    assert final.for_task("a").alpha == 0.01  # ... and inherits what it does not set
    assert final.for_task("b").max_acc_drop == 0.03
    assert final.for_task("b").min_identity_rate == 0.9
    assert final.for_task("c") == gate.Thresholds(max_acc_drop=0.03, alpha=0.01)
    assert final.severity["identity"] == "FAIL"
    later = gate.parse_policy({"tasks": {"a": {"max_acc_drop": 0.04}}}, final)
    assert later.for_task("a").max_acc_drop == 0.04


def test_override_sets_a_value_for_every_task() -> None:
    p = gate.parse_policy({"tasks": {"a": {"noise_floor": 0.2, "alpha": 0.01}}})
    q = gate.override(p, noise_floor=0.03)
    assert q.for_task("a").noise_floor == q.for_task("b").noise_floor == 0.03
    assert q.for_task("a").alpha == 0.01
    with pytest.raises(PolicyError, match="'noise_floor' must be at least 0 and at most 1"):
        gate.override(p, noise_floor=2)
    with pytest.raises(PolicyError, match="unknown policy key 'noise'"):
        gate.override(p, noise=0.1)


def test_policy_round_trips_through_its_yaml_form() -> None:
    p = gate.parse_policy(
        {"noise_floor": 0.01, "nfr_net_loss_only": False, "tasks": {"x": {"alpha": 0.1}}, "severity": {"loops": "WARN"}}
    )
    d = gate.policy_to_dict(p)
    assert json.loads(json.dumps(d)) == d
    assert gate.parse_policy(d) == p


def test_severity_levels() -> None:
    p = gate.parse_policy({"severity": {"identity": "fail", "stop_drift": False, "loops": "OFF"}})
    assert (p.severity["identity"], p.severity["stop_drift"], p.severity["loops"]) == ("FAIL", "off", "off")


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        ({"max_acc_dorp": 0.1}, "'max_acc_dorp'"),
        ({"tasks": {"demo_add": {"max_nfr": 0.1}}}, "tasks.demo_add: unknown policy key 'max_nfr'"),
        ({"max_acc_drop": "1%"}, "'max_acc_drop' must be a number"),
        ({"max_acc_drop": True}, "'max_acc_drop' must be a number"),
        ({"max_acc_drop": float("nan")}, "'max_acc_drop' must be a number"),
        ({"max_acc_drop": 5}, "'max_acc_drop' must be at least 0 and at most 1 (got 5)"),
        ({"alpha": 0}, "'alpha' must be above 0 and at most 0.25 (got 0)"),
        ({"min_stop_drift": None}, "'min_stop_drift' must be a number"),
        ({"nfr_net_loss_only": "yes"}, "'nfr_net_loss_only' must be true or false"),
        ({"tasks": ["demo_add"]}, "'tasks' must map task names"),
        ({"tasks": {"demo_add": 0.1}}, "tasks.demo_add: expected a mapping"),
        ({"severity": {"acc_drop": "ERROR"}}, "severity.acc_drop must be one of FAIL, WARN, off"),
        ({"severity": {"accuracy": "FAIL"}}, "unknown rule 'accuracy'"),
        ({"severity": {"inconclusive": "off"}}, "severity.inconclusive must be one of FAIL, WARN"),
        ({"severity": "strict"}, "'severity' must map rule names"),
        ([1, 2], "a policy must be a mapping"),
    ],
)
def test_malformed_policy_names_the_key(raw: Any, needle: str) -> None:
    with pytest.raises(PolicyError) as e:
        gate.parse_policy(raw, where="my.yaml")
    msg = str(e.value)
    assert needle in msg and msg.startswith("my.yaml: ") and "\n" not in msg


def test_policy_file_errors_name_the_file(tmp_path: Path) -> None:
    f = tmp_path / "p.yaml"
    f.write_text("tasks:\n  demo_add:\n    max_acc_drop: lots\n")
    with pytest.raises(PolicyError, match=r"p\.yaml: tasks\.demo_add: policy key 'max_acc_drop' must be a number"):
        gate.load_policy_file(f)
    f.write_text("max_acc_drop: [0.1\n")
    with pytest.raises(PolicyError, match=r"malformed YAML in .*p\.yaml"):
        gate.load_policy_file(f)
    with pytest.raises(PolicyError, match="policy file not found"):
        gate.load_policy_file(tmp_path / "missing.yaml")
    f.write_text("severity:\n  stop_drift: off\n")  # YAML 1.1 reads bare `off` as false
    assert gate.load_policy_file(f).severity["stop_drift"] == "off"


# -- statistics used by the rules ---------------------------------------------------


@pytest.mark.parametrize(("neg", "pos"), [(0, 0), (1, 0), (0, 1), (5, 0), (30, 12), (12, 30), (60, 60), (500, 430)])
def test_p_drop_is_the_one_sided_exact_mcnemar(neg: int, pos: int) -> None:
    expected = sps.binomtest(neg, neg + pos, 0.5, alternative="greater").pvalue if neg + pos else 1.0
    assert gate.p_drop(neg, pos) == pytest.approx(expected, rel=1e-9, abs=1e-15)


def test_p_rise_is_conservative() -> None:
    """From margins alone, p_rise is never below the exact paired p of any table with them."""
    rng = np.random.default_rng(0)
    for _ in range(300):
        n = int(rng.integers(1, 200))
        both, up, down = (int(x) for x in rng.multinomial(n, rng.dirichlet([0.5, 1, 1, 4]))[:3])
        kb, kc = both + down, both + up
        exact = gate.p_drop(up, down)
        assert gate.p_rise(kb, kc, n) >= exact - 1e-12


# -- the rules ----------------------------------------------------------------------

BIG = 2000  # items in a task large enough to be conclusive


@pytest.mark.parametrize(
    ("label", "cells", "extra", "thresholds", "expected"),
    [
        ("identical outputs", (1600, 0, 0, 400), {}, {}, set()),
        ("symmetric churn", (1500, 100, 100, 300), {}, {}, set()),
        ("churn, absolute NFR mode", (1500, 100, 100, 300), {}, {"nfr_net_loss_only": False}, {"negative_flips"}),
        ("3-pt significant drop", (1500, 100, 40, 360), {}, {}, {"acc_drop", "negative_flips"}),
        ("drop below max_acc_drop", (1600, 28, 10, 362), {}, {}, set()),
        ("0.9-pt drop, heavy churn", (1000, 148, 130, 722), {}, {"alpha": 0.2}, {"negative_flips"}),
        ("noise floor absorbs it", (1500, 100, 40, 360), {}, {"noise_floor": 0.05}, set()),
        (
            "non-termination rise",
            (1600, 0, 0, 400),
            {"n_generated": BIG, "nonterm_rate_candidate": 0.05},
            {},
            {"nonterm"},
        ),
        (
            "non-termination, 2 of 2000",
            (1600, 0, 0, 400),
            {"n_generated": BIG, "nonterm_rate_candidate": 0.001},
            {"max_nonterm_rise": 0.0},
            set(),
        ),
        (
            "loop rise",
            (1600, 0, 0, 400),
            {"n_generated": BIG, "loop_rate_base": 0.01, "loop_rate_candidate": 0.04},
            {},
            {"loops"},
        ),
        (
            "premature-ending rise",
            (1600, 0, 0, 400),
            {"n_generated": BIG, "premature_rate_base": 0.01, "premature_rate_candidate": 0.05},
            {},
            {"premature"},
        ),
        (
            "premature endings within the limit",
            (1600, 0, 0, 400),
            {"n_generated": BIG, "premature_rate_base": 0.01, "premature_rate_candidate": 0.018},
            {},
            set(),
        ),
        (
            "premature endings, limit raised",
            (1600, 0, 0, 400),
            {"n_generated": BIG, "premature_rate_candidate": 0.05},
            {"max_premature_rise": 0.1},
            set(),
        ),
        ("stop drift", (1600, 0, 0, 400), {"stop_drift_mean": -2.5}, {}, {"stop_drift"}),
        ("stop drift within bound", (1600, 0, 0, 400), {"stop_drift_mean": -0.3}, {}, set()),
        ("stop drift undefined", (1600, 0, 0, 400), {"stop_drift_mean": float("nan")}, {}, set()),
        ("identity bar", (1500, 100, 100, 300), {}, {"min_identity_rate": 0.95}, {"identity"}),
        ("identity bar met", (1600, 0, 0, 400), {"identity_rate": 0.99}, {"min_identity_rate": 0.95}, set()),
        ("40 items: inconclusive", (30, 1, 1, 8), {}, {}, {"inconclusive"}),
        ("no items: inconclusive", (0, 0, 0, 0), {}, {}, {"inconclusive"}),
        ("60 items, big gain: conclusive", (10, 0, 40, 10), {}, {}, set()),
        ("60 items, big drop: a FAIL, not a question", (40, 20, 0, 0), {}, {}, {"acc_drop", "negative_flips"}),
    ],
)
def test_rule_table(label: str, cells: tuple, extra: dict, thresholds: dict, expected: set[str]) -> None:
    policy = gate.parse_policy(thresholds)
    v = gate.judge([row("t", cells, **extra)], policy)
    assert {rule for _, rule in fired(v)} == expected, label
    sev = {gate.DEFAULT_SEVERITY[r] for r in expected}
    assert v.level == ("FAIL" if "FAIL" in sev else "WARN" if sev else "PASS")


def test_verdict_lists_every_fired_rule_with_numbers() -> None:
    tasks = [
        row("a", (1500, 100, 40, 360), n_generated=BIG, nonterm_rate_candidate=0.05),
        row("b", (30, 1, 1, 8)),
        row("c", (1600, 0, 0, 400)),
    ]
    v = gate.judge(tasks, gate.Policy())
    assert fired(v) == {("a", "acc_drop"), ("a", "negative_flips"), ("a", "nonterm"), ("b", "inconclusive")}
    assert v.level == "FAIL" and v.exit_code() == 1
    assert len(v.reasons) == 4
    for reason in v.reasons:
        assert reason.startswith(("[FAIL] a ", "[WARN] b ")) and "limit" in reason
    assert "-3.0 pts" in v.reasons[0] and "p=" in v.reasons[0]
    assert {r.task for r in v.results} == {"a", "b", "c"}
    acc = next(r for r in v.results if r.rule == "acc_drop" and r.task == "a")
    assert (acc.value, acc.threshold) == (pytest.approx(0.03), 0.01) and acc.p_value < 1e-6


def test_overall_is_reported_not_gated() -> None:
    """The overall row of a/b/c above (3130, 101, 41, 768) fails acc_drop when judged on its
    own, yet a comparison's verdict holds the task rows' outcomes only."""
    spec = {"a": {"cells": (1500, 100, 40, 360)}, "b": {"cells": (30, 1, 1, 8)}, "c": {"cells": (1600, 0, 0, 400)}}
    cmp = make_comparison(spec)
    assert (cmp.overall.name, cmp.overall.n, cmp.overall.negative_flips, cmp.overall.positive_flips) == (
        "overall", 4040, 101, 41,
    )  # fmt: skip
    assert [t.name for t in cmp.tasks] == ["a", "b", "c"]
    assert ("overall", "acc_drop") in fired(gate.judge([cmp.overall], gate.Policy()))
    assert {r.task for r in cmp.verdict.results} == {"a", "b", "c"}
    assert fired(cmp.verdict) == {("a", "acc_drop"), ("a", "negative_flips"), ("b", "inconclusive")}


def test_inconclusive_is_never_a_silent_pass() -> None:
    small = [row("t", (40, 0, 0, 10))]
    assert gate.judge(small, gate.Policy()).level == "WARN"
    assert gate.judge(small, gate.Policy()).exit_code(strict=True) == 1
    strict = gate.parse_policy({"severity": {"inconclusive": "FAIL"}})
    assert gate.judge(small, strict).level == "FAIL"
    lenient = gate.parse_policy({"max_detectable_drop": 0.5})
    assert gate.judge(small, lenient).level == "PASS"  # the user said what drop they need to see


def test_byte_identical_checkpoints_are_not_inconclusive() -> None:
    """Too few items cannot bound a drop, unless the candidate's files are the base's: then
    the items not sampled cannot move either. The other rules still judge what was measured."""
    small = [row("t", (8, 0, 0, 2))]
    assert gate.judge(small, gate.Policy()).level == "WARN"
    same = gate.judge(small, gate.Policy(), same_files=True)
    assert same.level == "PASS"
    (o,) = [r for r in same.results if r.rule == "inconclusive"]
    assert not o.fired and "byte-identical" in o.message
    flipped = [row("t", (100, 40, 0, 60))]  # flips measured anyway (a nondeterministic engine) still fail
    assert ("t", "acc_drop") in fired(gate.judge(flipped, gate.Policy(), same_files=True))


def test_holm_across_tasks() -> None:
    """A drop significant alone is not after Holm over 20 tasks; a big one still is."""
    alone = [row("t0", (1500, 70, 40, 390))]
    assert ("t0", "acc_drop") in fired(gate.judge(alone, gate.Policy()))
    many = alone + [row(f"t{i}", (1600, 20, 20, 360)) for i in range(1, 20)]
    assert ("t0", "acc_drop") not in fired(gate.judge(many, gate.Policy()))
    big = [row("t0", (1500, 150, 40, 310))] + many[1:]
    assert ("t0", "acc_drop") in fired(gate.judge(big, gate.Policy()))


def test_per_task_thresholds_and_severity_off() -> None:
    tasks = [row("a", (1500, 100, 40, 360)), row("b", (1500, 100, 40, 360))]
    p = gate.parse_policy({"tasks": {"b": {"max_acc_drop": 0.05}}, "severity": {"negative_flips": "off"}})
    v = gate.judge(tasks, p)
    assert fired(v) == {("a", "acc_drop")}
    assert not any(r.rule == "negative_flips" for r in v.results)


def test_probe_row_gets_only_its_rules() -> None:
    """A probe row (termination probe: rates only, no accuracy) is judged on its rates."""
    v = gate.judge([row("t", (1600, 0, 0, 400))], gate.Policy(), [probe_row(200, 0.6, 0.5)])
    assert {r.rule for r in v.results if r.task == "probe:termination"} == {"nonterm", "loops"}
    assert fired(v) == {("probe:termination", "nonterm"), ("probe:termination", "loops")}


def test_premature_rule_needs_significance_and_skips_probes() -> None:
    """A rise of 3 in 40 generations is over the limit but not significant; the probe row
    measures no premature endings and gets no premature outcome."""
    small = row("t", (1600, 0, 0, 400), n_generated=40, premature_rate_candidate=3 / 40)
    v = gate.judge([small], gate.Policy(), [probe_row(200, 0.0, 0.0)])
    out = next(r for r in v.results if r.rule == "premature")
    assert not out.fired and out.value == pytest.approx(0.075) and out.p_value > 0.05
    assert not any(r.rule == "premature" for r in v.results if r.task == "probe:termination")
    assert "premature" in gate.policy_to_dict(gate.Policy())["severity"]


def test_min_detectable_drop_matches_simulated_power() -> None:
    """At the gate's MDD the one-sided exact test has ~80% power (simulated, seeded).

    Connor's formula is a normal approximation and the exact test is a little conservative,
    so the simulated power lands somewhat under 80%."""
    rng = np.random.default_rng(0)
    n, psi = 1000, 0.1
    v = gate.judge([row("t", (750, 50, 50, 150))], gate.Policy())
    mdd = next(r for r in v.results if r.rule == "inconclusive").value
    neg = rng.binomial(n, (psi + mdd) / 2, 4000)
    pos = rng.binomial(n - neg, ((psi - mdd) / 2) / (1 - (psi + mdd) / 2))
    power = np.mean(sps.binom.sf(neg - 1, neg + pos, 0.5) < 0.05)
    print(f"\nMDD {100 * mdd:.2f} pts at n={n}, discordance {psi}: simulated power {100 * power:.1f}%")
    assert 0.72 < power < 0.88


# -- regress gate REPORT_DIR --------------------------------------------------------

FAILING = {"demo_add": {"cells": (300, 60, 10, 130), "nonterm": (0, 20)}, "demo_rev": {"cells": (400, 0, 0, 100)}}
WARNING = {"demo_add": {"cells": (400, 0, 0, 100)}, "tiny": {"cells": (20, 0, 0, 5)}}
PASSING = {"demo_add": {"cells": (400, 5, 5, 90)}, "demo_rev": {"cells": (350, 0, 0, 150)}}


@pytest.fixture
def no_plots(monkeypatch: pytest.MonkeyPatch) -> None:
    """Skip report.html's plots (seconds each) where a test is about the verdict only."""
    import harness.report.writer as writer

    monkeypatch.setattr(writer, "render_html", lambda cmp: f"<p>{cmp.verdict.level}</p>")


def _report(tmp_path: Path, spec: dict, name: str = "r") -> Path:
    from harness.report import write_report

    return write_report(make_comparison(spec), tmp_path / name)


def _gate(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["gate", *args])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


@pytest.mark.usefixtures("no_plots")
def test_gate_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fail, warn, ok = _report(tmp_path, FAILING, "f"), _report(tmp_path, WARNING, "w"), _report(tmp_path, PASSING, "p")
    code, out, _ = _gate(capsys, str(fail))
    assert code == 1 and out.startswith("FAIL") and "acc_drop" in out and "nonterm" in out
    assert _gate(capsys, str(warn))[0] == 0
    code, out, _ = _gate(capsys, str(warn), "--strict")
    assert code == 1 and "inconclusive" in out
    assert _gate(capsys, str(ok))[0] == 0
    assert _gate(capsys, str(ok), "--strict")[0] == 0


@pytest.mark.usefixtures("no_plots")
def test_gate_reproduces_and_rewrites_the_verdict(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = _report(tmp_path, FAILING)
    before = json.loads((d / "summary.json").read_text())
    assert _gate(capsys, str(d))[0] == 1
    after = json.loads((d / "summary.json").read_text())
    assert (after["verdict"], after["rules"], after["policy"]) == (before["verdict"], before["rules"], before["policy"])

    relaxed = tmp_path / "relaxed.yaml"
    relaxed.write_text("max_acc_drop: 0.2\nmax_negative_flip_rate: 0.5\nseverity:\n  nonterm: WARN\n  loops: WARN\n")
    code, out, _ = _gate(capsys, str(d), "--policy", str(relaxed))
    assert code == 0 and out.startswith("WARN")
    summary = json.loads((d / "summary.json").read_text())
    assert summary["verdict"] == "WARN" and summary["policy"]["max_acc_drop"] == 0.2
    assert 'name="acc_drop"' in (d / "junit.xml").read_text()
    # the relaxed policy is now the stored one: judging again without --policy keeps it
    assert _gate(capsys, str(d))[0] == 0


@pytest.mark.usefixtures("no_plots")
def test_gate_malformed_policy_exits_2_naming_the_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = _report(tmp_path, PASSING)
    bad = tmp_path / "bad.yaml"
    for text, needle in (
        ("tasks:\n  demo_add:\n    max_acc_drpo: 0.1\n", "tasks.demo_add: unknown policy key 'max_acc_drpo'"),
        ("alpha: high\n", "policy key 'alpha' must be a number"),
        ("severity: {loops: maybe}\n", "severity.loops must be one of"),
        ("max_acc_drop: [\n", "malformed YAML"),
    ):
        bad.write_text(text)
        code, _, err = _gate(capsys, str(d), "--policy", str(bad))
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1, err
        assert lines[0].startswith("regress: error: ") and str(bad) in lines[0] and needle in lines[0]
    assert _gate(capsys, str(d))[0] == 0  # the report was left as it was


def test_gate_on_a_folder_that_is_not_a_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _gate(capsys, str(tmp_path / "nowhere"))
    assert code == 2 and "not a regress report folder" in err and len(err.strip().splitlines()) == 1


def test_gate_is_fast_on_100k_items(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Re-judging 100k stored items, report folder rewritten whole (plots included)."""
    spec = {f"task{i}": {"cells": (15000, 600, 400, 4000), "nonterm": (10, 40), "changed": 2000} for i in range(5)}
    d = _report(tmp_path, spec)
    t0 = time.perf_counter()
    code, out, _ = _gate(capsys, str(d))
    seconds = time.perf_counter() - t0
    print(f"\nregress gate on 100,000 stored items: {seconds:.1f} s ({out.splitlines()[0]})")
    assert code == 1 and seconds < 30
