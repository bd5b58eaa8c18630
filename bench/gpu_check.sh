#!/usr/bin/env bash
# GPU check for an air-gapped machine with one CUDA GPU, PyTorch and transformers, no
# network and no vLLM: regress's tokens/s and its ratio to a bare model.generate loop on
# 2,000 prompts with a random-initialised ~1B Llama (bench/gpu_check.py), in < 8 minutes.
#
#   bench/gpu_check.sh            on the GPU machine (uses vLLM too where it imports)
#   bench/gpu_check.sh --cpu      the small CPU mode (tests/test_backend_vllm.py runs it)
#   bench/gpu_check.sh pack       on a networked machine: put the wheels regress needs
#                                 beyond torch+transformers into bench/wheels (< 60 MiB)
#
# The machine's own python is used ($PYTHON, else .venv/bin/python, else python3); what it
# lacks (lm-eval, dill: ~9 MiB, pure Python) is installed from bench/wheels into
# .cache/gpu-check-site with --no-deps --no-index, so torch and transformers are never
# touched. Extra arguments go to bench/gpu_check.py (--prompts, --max-tokens, ...).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
WHEELS=bench/wheels
SITE=.cache/gpu-check-site
NEEDS=(lm_eval==0.4.13 dill)   # what harness.lm_adapter imports beyond torch/transformers/jinja2/yaml/tqdm
LIMIT_MIB=60

if [[ -n "${PYTHON:-}" ]]; then PY=$PYTHON
elif [[ -x .venv/bin/python ]]; then PY=.venv/bin/python
else PY=python3
fi

if [[ "${1:-}" == "pack" ]]; then
    mkdir -p "$WHEELS"
    "$PY" -m pip download -q --no-deps --only-binary=:all: -d "$WHEELS" "${NEEDS[@]}"
    size=$(du -sm "$WHEELS" | cut -f1)
    ls -l "$WHEELS"
    if (( size > LIMIT_MIB )); then echo "gpu_check: $WHEELS is ${size} MiB, over ${LIMIT_MIB} MiB" >&2; exit 2; fi
    echo "gpu_check: $WHEELS holds ${size} MiB; carry it with the repo"
    exit 0
fi

export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false TRANSFORMERS_NO_ADVISORY_WARNINGS=1
export VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-1}
if ! "$PY" -c "import torch, transformers" 2>/dev/null; then
    echo "gpu_check: $PY lacks torch or transformers, which this check expects on the machine" >&2; exit 2
fi
if ! "$PY" -c "import lm_eval.api.model, dill" 2>/dev/null; then
    if ! compgen -G "$WHEELS/*.whl" >/dev/null; then
        echo "gpu_check: $PY lacks lm-eval; run 'bench/gpu_check.sh pack' on a networked machine first" >&2; exit 2
    fi
    "$PY" -m pip install -q --no-index --no-deps --upgrade --target "$SITE" "$WHEELS"/*.whl
    export PYTHONPATH="$PYTHONPATH:$ROOT/$SITE"
fi
# the 8-minute budget, enforced: a hung engine ends the check instead of the machine's lease
exec timeout "${GPU_CHECK_TIMEOUT_S:-470}" "$PY" bench/gpu_check.py "$@"
