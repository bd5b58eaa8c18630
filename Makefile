# regress: the two commands of the README do all the set-up on a fresh machine.
#   make regress [MODEL=ckpt BASE=ckpt SUITE=demo BACKEND=hf OUT=dir ARGS=...]   non-zero on FAIL or error
#   make test     (runs make check, ruff and mypy, first)
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= .cache/demo
SUITE ?= demo
BACKEND ?= hf
MODEL ?=
REAL ?=
BASE ?= $(DEMO_DIR)/base
OUT ?=
ARGS ?=
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TRANSFORMERS_NO_ADVISORY_WARNINGS ?= 1
export TOKENIZERS_PARALLELISM ?= false
export VLLM_CPU_KVCACHE_SPACE ?= 1

.PHONY: regress test test-full check venv demo bench clean

venv: $(STAMP)

# torch first and pinned (the CPU build from local disk); then the project with vLLM's CPU
# build; then drop the PyPI torchvision/torchaudio/torchcodec vLLM drags in, which break
# against this torch and which text models do not need.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev,cpu-vllm,tasks,real]' torch==2.13.0
	-$(BIN)/pip uninstall -y -q torchvision torchaudio torchcodec
	@bash scripts/install-browser.sh
	@touch $@

demo: $(STAMP)
	$(BIN)/regress demo --out $(DEMO_DIR)

# `make regress` with no MODEL builds (or reuses) the demo checkpoints and compares the
# base with each fine-tune; with MODEL it compares BASE with MODEL.
ifneq ($(REAL),)
# REAL=1: SmolLM2-135M-Instruct from PyPI and its real fine-tunes, on suite `real` with vLLM
REGRESS_CMD = $(BIN)/regress demo --out $(DEMO_DIR) --real --compare --backend vllm $(if $(OUT),--out-reports $(OUT)) $(ARGS)
else ifeq ($(MODEL),)
REGRESS_CMD = $(BIN)/regress demo --out $(DEMO_DIR) --compare --suite $(SUITE) --backend $(BACKEND) $(if $(OUT),--out-reports $(OUT)) $(ARGS)
else
REGRESS_CMD = $(BIN)/regress compare --base $(BASE) --model $(MODEL) --suite $(SUITE) --backend $(BACKEND) $(if $(OUT),--out $(OUT)) $(ARGS)
endif

# The regress command owns the exit status: 0 pass, 1 regression, 2 error. make itself
# reports any failed recipe as 2, so `make regress` is non-zero on FAIL (and on an error)
# but cannot tell the two apart by its status; the script prints one line saying which it
# was ("make regress: regress exited 1 (regression found; 2 is an error)"). A CI gate that
# must tell 1 from 2 calls `.venv/bin/regress compare ...` directly.
regress: venv
	@bash scripts/run-regress.sh $(REGRESS_CMD)

# ruff and mypy first: a lint or type error fails the tests.
test: check
	$(BIN)/python -m pytest -q -rs --durations=30 $(ARGS)

# The full-size checks CI leaves out (tests marked `full`: the real demo at its limit, both
# backends; hours on 2 CPU cores, minutes on a GPU). ARGS narrows them, e.g. ARGS='-k vllm'.
test-full: $(STAMP)
	REGRESS_FULL_TESTS=1 $(BIN)/python -m pytest -q -rs -m full --durations=0 $(ARGS)

check: $(STAMP)
	$(BIN)/ruff check harness tests bench setup.py
	$(BIN)/mypy harness

bench: $(STAMP)
	$(BIN)/python bench/throughput.py

clean:
	rm -rf $(VENV) .cache reports/*/ .pytest_cache
