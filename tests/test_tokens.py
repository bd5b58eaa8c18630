"""``regress tokens`` (harness/sft/): the key-token rule table by table, the CLI end to end
on the demo base (audit counts, labels, outliers, errors), and the demo's ft-key-tokens."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from harness import sft as tokens
from harness.cli import main
from harness.errors import RegressError

# -- the rule, table-driven ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("greedy", "prob", "min_prob", "key"),
    [
        (True, 0.99, 0.0, False),  # the base produces it: not key
        (False, 0.40, 0.0, True),  # another token is the argmax: key
        (False, 0.00, 0.0, True),
        (True, 0.30, 0.0, False),  # argmax at low probability: still not key by default
        (True, 0.30, 0.5, True),  # ... but key under --min-prob 0.5
        (True, 0.50, 0.5, False),  # the threshold itself is not below it
        (False, 0.90, 0.5, True),  # a mismatch is key whatever its probability
    ],
)
def test_is_key(greedy, prob, min_prob, key):
    assert tokens.is_key(greedy, prob, min_prob) is key


@pytest.mark.parametrize(
    ("values", "k", "threshold"),
    [
        ([1.0, 2.0, 3.0, 4.0, 5.0], 3.0, 4.0 + 3.0 * 2.0),  # Q1 2, Q3 4
        ([0.0, 0.0, 1.0, 1.0], 1.0, 1.0 + 1.0 * 1.0),  # Q1 0, Q3 1 (linear interpolation)
        ([5.0, 1.0, 3.0, 2.0, 4.0], 1.5, 4.0 + 1.5 * 2.0),  # order does not matter
        ([2.0, 2.0, 2.0, 2.0], 3.0, 2.0),  # no spread: anything above Q3
        ([1.0, 2.0, 3.0], 3.0, None),  # fewer than 4: no quartiles, no outliers
        ([1.0, float("nan"), 2.0, 3.0], 3.0, None),  # NaN (a prompt of one token) is not counted
    ],
)
def test_outlier_threshold(values, k, threshold):
    got = tokens.outlier_threshold(values, k)
    assert got == pytest.approx(threshold) if threshold is not None else got is None


def test_quartiles_are_numpys():
    rng = np.random.default_rng(0)
    for n in (4, 5, 7, 100):
        xs = rng.normal(size=n).tolist()
        assert tokens.quartiles(xs) == pytest.approx(tuple(np.percentile(xs, [25, 75])))


# logits over a 4-token vocabulary at 3 positions, and the token at each position
LOGITS = [[4.0, 1.0, 0.0, 0.0], [0.0, 2.0, 3.0, 1.0], [1.0, 1.0, 1.0, 1.0]]


@pytest.mark.parametrize(
    ("targets", "greedy", "rank"),
    [
        ([0, 2, 0], [True, True, True], [1, 1, 1]),  # every argmax (a tie: the first index is the argmax)
        ([1, 1, 3], [False, False, False], [2, 2, 1]),  # rank 1 on a tie although not the argmax
        ([3, 0, 2], [False, False, False], [3, 4, 1]),
    ],
)
def test_token_scores(targets, greedy, rank):
    logits = torch.tensor(LOGITS)
    g, p, r, lp = tokens.token_scores(logits, torch.tensor(targets))
    assert g.tolist() == greedy and r.tolist() == rank
    want = torch.softmax(logits, -1)[range(3), targets]
    assert p.tolist() == pytest.approx(want.tolist()) and lp.exp().tolist() == pytest.approx(want.tolist())
    # batched: the same answer per row
    gb, pb, rb, _ = tokens.token_scores(logits[None].repeat(2, 1, 1), torch.tensor([targets, targets]))
    assert gb[1].tolist() == greedy and rb[1].tolist() == rank and pb[0].tolist() == pytest.approx(p.tolist())


# ChatML-like: "<u>hi</u><a>ok</e>\n" with a template newline after the end-of-turn token (id 9)
CHATML_IDS = [1, 2, 3, 4, 5, 6, 7, 9, 8]
CHATML_OFFSETS = [(0, 3), (3, 4), (4, 5), (5, 9), (9, 12), (12, 13), (13, 14), (14, 17), (17, 18)]


@pytest.mark.parametrize(
    ("spans", "eot", "mask"),
    [
        ([(12, 18)], [9], [0, 0, 0, 0, 0, 1, 1, 1, 0]),  # the turn ends at its end-of-turn token
        ([(12, 18)], [], [0, 0, 0, 0, 0, 1, 1, 1, 1]),  # without one, the whole turn's text
        ([(3, 5), (12, 18)], [9], [0, 1, 1, 0, 0, 1, 1, 1, 0]),  # two turns
        ([(11, 13)], [9], [0, 0, 0, 0, 0, 1, 0, 0, 0]),  # a token starting before the span is not in it
        ([], [9], [0] * 9),
    ],
)
def test_assistant_mask(spans, eot, mask):
    assert tokens.assistant_mask(CHATML_OFFSETS, CHATML_IDS, spans, eot) == [bool(x) for x in mask]


def test_turn_spans_and_labels():
    full = "<s>U:hi A:ok U:yo A:no"
    assert tokens.turn_spans([("<s>U:hi A:", "<s>U:hi A:ok"), ("<s>U:hi A:ok U:yo A:", full)], full) == [
        (10, 12),
        (20, 22),
    ]
    with pytest.raises(ValueError, match="renders earlier turns differently"):
        tokens.turn_spans([("<s>U:hi A:", "<s>U:hi A:OK")], full)
    assert tokens.labels_of([5, 6, 7, 8], [False, True, False, True]) == [-100, 6, -100, 8]


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        ([1, 2], 'expected {"messages"'),
        ({"text": "hi"}, 'expected {"messages"'),
        ({"messages": []}, 'expected {"messages"'),
        ({"messages": [{"role": "user"}]}, "message 0 needs a string role and a string content"),
        ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": 3}]}, "message 1 needs"),
        ({"messages": [{"role": "user", "content": "hi"}]}, "no assistant turn"),
    ],
)
def test_parse_rows_errors(obj, message):
    with pytest.raises(RegressError, match="^f.jsonl:7: ") as e:
        tokens.parse_rows([(7, obj)], "f.jsonl")
    assert message in str(e.value)


@pytest.mark.parametrize(("kw", "message"), [({"min_prob": 1.5}, "--min-prob"), ({"outlier_k": 0}, "--outlier-k")])
def test_rule_bounds(kw, message):
    with pytest.raises(RegressError, match=message):
        tokens.TokenRule(**kw)


# -- the CLI on the demo base ----------------------------------------------------------------

GIBBERISH = "Zq#Xw!Pk@Lm%Rt&Vb*Yn(Hj)Gf_Dc+Sa=Qe;Wr:Ty<Ui>Op[As]Df/Gh"


def _sft_rows() -> list[dict]:
    """Nine additions the base answers, one with a wrong tail, a two-turn chat, and a prompt of
    line noise the base cannot read (an outlier)."""
    from harness.demo.world import eval_split

    def chat(*turns: str) -> dict:
        roles = ["user", "assistant"] * len(turns)
        return {"messages": [{"role": r, "content": c} for r, c in zip(roles, turns)]}

    rows = [chat(e.question, e.answer) for e in eval_split("add")[:9]]
    rows.append(chat("what is 12+13?", "25x"))  # line 10: "x" is no answer the base would give
    rows.append(chat("what is 10+11?", "21", "reverse cat", "tac"))  # line 11: two assistant turns
    rows.append(chat(GIBBERISH, "7"))  # line 12
    return rows


@pytest.fixture(scope="module")
def audited(base_ckpt, tmp_path_factory):
    return _audit(base_ckpt, tmp_path_factory.mktemp("tokens"))


def _audit(base: Path, d: Path) -> tuple[Path, list[dict], dict[int, dict], dict]:
    """``regress tokens`` on ``_sft_rows`` under ``base``: its folder, audit rows, kept rows by line, summary."""
    data = d / "sft.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _sft_rows()))
    out = d / "out"
    assert main(["tokens", "--base", str(base), "--data", str(data), "--out", str(out)]) == 0
    audit = [json.loads(x) for x in (out / "audit.jsonl").read_text().splitlines()]
    masked = {r["line"]: r for r in map(json.loads, (out / "masked.jsonl").read_text().splitlines())}
    summary = json.loads((out / "summary.json").read_text())
    return out, audit, masked, summary


def _transcript_ids(base: Path, messages: list[dict]) -> list[int]:
    from harness.checkpoint import load_tokenizer

    tok = load_tokenizer(base)
    return tok(tok.apply_chat_template(messages, tokenize=False), add_special_tokens=False).input_ids


def test_audit_counts_and_files(audited, base_ckpt):
    out, audit, masked, summary = audited
    rows = _sft_rows()
    assert [a["line"] for a in audit] == list(range(1, 13))
    for a, row in zip(audit, rows):
        answers = [m["content"] for m in row["messages"] if m["role"] == "assistant"]
        # one token per character in the demo tokenizer, plus each turn's end-of-turn token
        assert a["assistant_tokens"] == sum(len(x) + 1 for x in answers), a["line"]
        assert a["tokens"] == len(_transcript_ids(base_ckpt, row["messages"]))
        assert a["key_share"] == pytest.approx(a["key_tokens"] / a["assistant_tokens"])
        assert a["key_tokens"] == sum(t["key"] for t in a["assistant"])
        assert all(t["key"] == (not t["greedy"]) for t in a["assistant"])  # the default rule
        assert all((t["rank"] == 1) >= t["greedy"] for t in a["assistant"])
    assert summary["examples"] == 12
    assert summary["assistant_tokens"] == sum(a["assistant_tokens"] for a in audit)
    assert summary["key_tokens"] == sum(a["key_tokens"] for a in audit)
    assert summary["kept"] == len(masked) == sum(a["kept"] for a in audit)
    md = (out / "audit.md").read_text()
    assert "argmax is another token" in md and "Q3 + 3 x IQR" in md and f"kept: {len(masked)}" in md
    assert (out / "tokens.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_key_tokens_follow_the_base(audited, base_ckpt):
    """Greedy flags agree with the base's own greedy generation, token by token."""
    from transformers import AutoModelForCausalLM

    from harness.demo.tokenizer import build_tokenizer
    from harness.demo.train import prompt_ids

    _, audit, _, _ = audited
    tok = build_tokenizer()
    model = AutoModelForCausalLM.from_pretrained(str(base_ckpt), dtype=torch.float32)
    for a, row in list(zip(audit, _sft_rows()))[:10]:
        ids = prompt_ids(tok, row["messages"][0]["content"])
        answer = [t["id"] for t in a["assistant"]]
        assert a["assistant"][0]["pos"] == len(ids)  # the answer starts right after the prompt
        with torch.no_grad():
            gen = model.generate(torch.tensor([ids]), max_new_tokens=len(answer), do_sample=False,
                                 eos_token_id=None, pad_token_id=tok.pad_token_id)[0, len(ids):].tolist()  # fmt: skip
        same = next((i for i, (g, t) in enumerate(zip(gen, answer)) if g != t), len(answer))
        flags = [t["greedy"] for t in a["assistant"]]
        assert flags[:same] == [True] * same, a["line"]  # what the base generates is greedy-matched
        if same < len(answer):
            assert flags[same] is False, a["line"]  # and where it would write another token, key
    line10 = audit[9]["assistant"]
    assert line10[2]["text"] == "x" and line10[2]["key"], "a token the base would not write is key"


def test_masked_labels(audited, base_ckpt):
    _, audit, masked, _ = audited
    rows = _sft_rows()
    greedy_masked = 0
    for a in audit:
        if not a["kept"]:
            assert a["line"] not in masked
            continue
        m = masked[a["line"]]
        ids = m["input_ids"]
        assert ids == _transcript_ids(base_ckpt, rows[a["line"] - 1]["messages"])
        assert m["attention_mask"] == [1] * len(ids)
        key = {t["pos"] for t in a["assistant"] if t["key"]}
        assert key, "a kept example has a key token"
        assert m["labels"] == [t if i in key else -100 for i, t in enumerate(ids)]
        assert m["assistant_masks"] == [int(i in key) for i in range(len(ids))]
        greedy_masked += sum(t["greedy"] for t in a["assistant"])
    assert greedy_masked > 0, "kept examples carry tokens the base produces, and they are masked"
    # the two-turn chat: both turns scored, the prompt of the second not
    two = audit[10]
    assert [t["text"] for t in two["assistant"]] == ["2", "1", "<|end|>", "t", "a", "c", "<|end|>"]


@pytest.fixture(scope="module")
def audited_real(smol, tmp_path_factory):
    """The same file audited under SmolLM2, a model of text: the demo base never learned its
    prompts (its loss is on answers), so its prompt perplexities are all alike (1e5 and more)
    and which prompt stands out depends on the machine that trained it."""
    return _audit(smol["base"], tmp_path_factory.mktemp("tokens-real"))


@pytest.mark.slow
def test_outliers_dropped(audited_real):
    _, audit, masked, summary = audited_real
    logs = [math.log(a["prompt_ppl"]) for a in audit]
    q1, q3 = np.percentile(logs, [25, 75])
    want = [a["line"] for a, x in zip(audit, logs) if x > q3 + 3 * (q3 - q1)]
    assert 12 in want, "a prompt of line noise is an outlier"
    assert [a["line"] for a in audit if a["outlier"]] == want == summary["outlier_lines"]
    assert summary["outliers_dropped"] == len(want) and not set(want) & set(masked)
    no_key = [a["line"] for a in audit if not a["outlier"] and a["key_tokens"] == 0]
    assert summary["no_key_dropped"] == len(no_key) and not set(no_key) & set(masked)


def test_masked_rows_in_memory_equal_the_file(audited, base_ckpt):
    """``masked_rows`` (what the demo and real-model builds train on) is masked.jsonl's kept rows."""
    _, _, masked, _ = audited
    rows = tokens.masked_rows(base_ckpt, _sft_rows())
    assert rows == [(m["input_ids"], m["labels"]) for m in masked.values()]


def _bad_inputs(tmp: Path, base: Path) -> dict[str, tuple[list[str], str]]:
    import shutil

    good = tmp / "good.jsonl"
    good.write_text(json.dumps(_sft_rows()[0]) + "\n")
    bad_json = tmp / "bad.jsonl"
    bad_json.write_text(json.dumps(_sft_rows()[0]) + "\n" + '{"messages": [\n')
    no_asst = tmp / "noasst.jsonl"
    no_asst.write_text(
        json.dumps(_sft_rows()[0]) + "\n\n" + json.dumps({"messages": [{"role": "user", "content": "hi"}]})
    )
    plain = tmp / "no-template"
    shutil.copytree(base, plain)
    (plain / "chat_template.jinja").unlink()
    cfg = json.loads((plain / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (plain / "tokenizer_config.json").write_text(json.dumps(cfg))
    return {
        "missing file": ([str(base), str(tmp / "nope.jsonl")], f"SFT data not found: {tmp / 'nope.jsonl'}"),
        "malformed JSON": ([str(base), str(bad_json)], f"{bad_json}:2: malformed JSON"),
        "no assistant turn": ([str(base), str(no_asst)], f"{no_asst}:3: no assistant turn"),
        "no chat template": ([str(plain), str(good)], f"checkpoint {plain} has no chat template"),
        "missing checkpoint": ([str(tmp / "nockpt"), str(good)], "checkpoint not found"),
    }


@pytest.mark.parametrize("case", ["missing file", "malformed JSON", "no assistant turn", "no chat template",
                                  "missing checkpoint"])  # fmt: skip
def test_errors_are_one_line_and_write_nothing(case, base_ckpt, tmp_path, capsys):
    (base, data), message = _bad_inputs(tmp_path, base_ckpt)[case]
    out = tmp_path / "out"
    before = set(tmp_path.iterdir())
    assert main(["tokens", "--base", base, "--data", data, "--out", str(out)]) == 2
    err = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    assert len(err) == 1 and err[0].startswith("regress: error: ") and message in err[0], err
    assert set(tmp_path.iterdir()) == before, "nothing written, not even a temporary folder"


# -- the demo's ft-key-tokens ----------------------------------------------------------------


@pytest.mark.slow
def test_ft_key_tokens_builds_and_compares(demo, session_store, tmp_path):
    ft = demo["ft-key-tokens"]
    audit = ft / "tokens"
    s = json.loads((audit / "summary.json").read_text())
    assert s["examples"] == 60 * 64 and 0 < s["key_share"] < 1
    assert (audit / "masked.jsonl").is_file() and (audit / "tokens.png").is_file()
    info = json.loads((ft.parent / "BUILD.json").read_text())["train"]["ft-key-tokens"]
    assert info["steps"] == 60 and info["kept"] == s["kept"]
    out = tmp_path / "rep"
    code = main(["compare", "--base", str(demo["base"]), "--model", str(ft), "--suite", "demo", "--limit", "100",
                 "--store", str(session_store), "--out", str(out)])  # fmt: skip
    assert code in (0, 1)
    summary = json.loads((out / "summary.json").read_text())
    tasks = {t["name"]: t for t in summary["tasks"]}
    assert set(tasks) == {"demo_add", "demo_rev", "demo_sort", "demo_cmp", "demo_count"}
    # it learned some of the new skill: more of its counting answers begin with the count than
    # the base's. Whether it also learned to stop there depends on whether the base already
    # put the end-of-turn first after the count, which the key-token mask then leaves out of
    # the loss: some demo builds stop, others run on ("20888...", a non-termination FAIL).
    items = pd.read_parquet(out / "items.parquet")
    count = items[items.task == "demo_count"]
    begun = {side: sum(str(o).startswith(str(t)) for o, t in zip(count[f"output_{side}"], count["target"]))
             for side in ("base", "cand")}  # fmt: skip
    assert begun["cand"] > begun["base"], begun
