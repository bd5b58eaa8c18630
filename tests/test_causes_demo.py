"""Why it forgot, on demo fine-tunes with a planted cause (issue 21's must-hold).

Each planted fine-tune loses items for one known reason; regress must name that reason
for at least 80% of the items it loses (harness/causes.py, the knowledge probe of
harness/knowledge.py):

* ft-no-eos (answers trained without the end-of-turn token): ``runaway``;
* ft-early-eot (half of the sort answers trained empty): ``empty`` / ``cut short``;
* ft-format (``Answer: X.`` for ``X``): ``format`` / ``unparsed``, knowledge kept;
* ft-overwrite (add answers a+b+1, cmp the smaller number, same format): ``knowledge lost``.

ft-identical and ft-answer-only lose (almost) nothing to knowledge.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest

from harness import causes
from harness.cli import main, verdict_lines

pytestmark = pytest.mark.slow

LIMIT = "100"  # items per task, as tests/test_premature.py (so the two share the session store)
PLANTED = {
    "ft-no-eos": {causes.RUNAWAY},
    "ft-early-eot": {causes.EMPTY, causes.CUT_SHORT},
    "ft-format": {causes.FORMAT, causes.UNPARSED},
    "ft-overwrite": {causes.LOST},
}


@pytest.fixture(scope="module")
def checkpoints(planted):
    return planted


@pytest.fixture(scope="module")
def reports(checkpoints, session_store, tmp_path_factory):
    made = {}

    def compare(name, *extra):
        key = (name, *extra)
        if key not in made:
            d = tmp_path_factory.mktemp("causes") / name
            main(["compare", "--base", str(checkpoints["base"]), "--model", str(checkpoints[name]), "--suite",
                  "demo", "--limit", LIMIT, "--store", str(session_store), "--out", str(d), *extra])  # fmt: skip
            made[key] = d
        return made[key]

    return compare


def _lost(d):
    items = pd.read_parquet(d / "items.parquet")
    return items, items[items["flip"] == "neg"]


@pytest.mark.parametrize("name", list(PLANTED))
def test_planted_cause_explains_the_losses(reports, name):
    d = reports(name)
    items, lost = _lost(d)
    n = causes.counts(lost["cause"])
    share = lost["cause"].isin(PLANTED[name]).mean()
    print(f"\n{name}: {len(lost)} lost: {n}; {share:.1%} in {sorted(PLANTED[name])}")
    assert len(lost) >= 20, "the planted fine-tune loses items"
    assert share >= 0.8
    assert (lost["cause"] != "").all() and (items.loc[items["flip"] != "neg", "cause"] == "").all()
    summary = json.loads((d / "summary.json").read_text())
    assert summary["causes"]["overall"] == n
    assert set(summary["causes"]["remedies"]) == set(n)


def test_format_loss_keeps_the_knowledge(reports):
    """ft-format's format losses hold the gold answer in their output, and at least 80% of
    its lost items are not called knowledge lost."""
    _, lost = _lost(reports("ft-format"))
    fmt = lost[lost["cause"] == causes.FORMAT]
    assert len(fmt) and all(causes.contains_gold(o, t) for o, t in zip(fmt["output_cand"], fmt["target"]))
    assert (lost["cause"] != causes.LOST).mean() >= 0.8


def test_overwrite_ranks_a_wrong_answer_first(reports):
    """ft-overwrite's add losses: teacher-forced in the base's format, the candidate prefers
    its own (a+b+1) answer to the gold one, and the gold answer's log-likelihood fell far
    beyond the margin."""
    _, lost = _lost(reports("ft-overwrite"))
    add = lost[lost["task"] == "demo_add"]
    assert len(add) >= 20
    assert not add["gold_top_cand"].any()
    drop = add["gold_ll_base"] - add["gold_ll_cand"]
    assert (drop > causes.KNOWLEDGE_MARGIN).mean() >= 0.8


@pytest.mark.parametrize("name", ["ft-identical", "ft-answer-only"])
def test_kept_knowledge_is_not_called_lost(reports, name):
    items, lost = _lost(reports(name))
    n_lost = int((lost["cause"] == causes.LOST).sum())
    print(f"\n{name}: {len(lost)} lost: {causes.counts(lost['cause'])}")
    assert n_lost <= 0.01 * len(items)


def test_gate_on_knowledge_loss(reports, tmp_path, capsys):
    """A team FAILs on knowledge loss and only WARNs on format loss (and on the rest): ft-overwrite
    FAILs on knowledge_loss, ft-format only WARNs (its few knowledge-lost rev items, 8%, stay
    under a 10% limit; its count loops are WARNs here)."""
    policy = tmp_path / "p.yaml"
    policy.write_text(
        "max_knowledge_loss_rate: 0.10\nmax_format_loss_rate: 0.02\n"
        "severity: {acc_drop: WARN, negative_flips: WARN, nonterm: WARN, loops: WARN, premature: WARN}\n"
    )
    assert main(["gate", str(reports("ft-overwrite")), "--policy", str(policy)]) == 1
    s = json.loads((reports("ft-overwrite") / "summary.json").read_text())
    assert {"demo_add", "demo_cmp"} <= {r["task"] for r in s["rules"] if r["rule"] == "knowledge_loss" and r["fired"]}
    assert main(["gate", str(reports("ft-format")), "--policy", str(policy)]) == 0
    s = json.loads((reports("ft-format") / "summary.json").read_text())
    assert s["verdict"] == "WARN"
    assert any(r["rule"] == "format_loss" and r["fired"] for r in s["rules"])
    out = capsys.readouterr().out
    assert "[why] demo_add:" in out and "format loss: realign" in out


def test_verdict_lines_name_the_causes(reports):
    from harness.pipeline import rejudge

    cmp, out = rejudge(str(reports("ft-no-eos")), None)
    lines = verdict_lines(cmp, out)
    why = [x for x in lines if x.startswith("  [why] ")]
    assert why and all(" lost: " in x for x in why)
    assert any("runaway" in x for x in why)
    assert any(x.strip().startswith("runaway: stop loss") for x in lines)
    md = (out / "report.md").read_text()
    assert "**Why it forgot**" in md and "runaway" in md
