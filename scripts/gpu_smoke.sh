#!/usr/bin/env bash
# GPU smoke checks for a machine with one NVIDIA GPU (`make gpu-smoke`).
#
# 1. Checks for a GPU first (nvidia-smi), before installing anything.
# 2. Installs the GPU image's lock (docker/requirements-gpu.lock: vLLM 0.33.0, torch 2.14.0,
#    transformers 5.20.2, DeepSpeed 0.19.8, ...) into $GPU_VENV (default .venv-gpu) with
#    scripts/lock_env.py (--with-vllm), which also brings the test tools and checks every locked
#    version; reused while its stamp is newer than the lock and pyproject.toml. The first install
#    downloads several GB of CUDA wheels.
# 3. Runs the `gpu`-marked checks on the tiny Qwen2.5-VL, each in its own pytest process:
#    vLLM vs transformers label probabilities (bf16, max_model_len 2048), the transformers engine
#    on CUDA, one DeepSpeed bf16 training step on CUDA, QLoRA (4-bit NF4 base, 10 DeepSpeed bf16
#    steps, the adapter saved and merged); ~3-5 minutes once installed.
# 4. Prints one line per check: PASS/FAIL/SKIP, the check, its figure.
#
# Exit status: 0 every check passed; 1 a check failed or was skipped; 2 no usable GPU here
# (nothing is installed or run); 3 the environment could not be set up.
set -uo pipefail
cd "$(dirname "$0")/.."

VENV=${GPU_VENV:-.venv-gpu}
LOCK=docker/requirements-gpu.lock
STAMP=$VENV/.installed
CHECK_TIMEOUT_S=${GPU_SMOKE_CHECK_TIMEOUT_S:-600}
CHECKS=(
  "vllm-vs-transformers=tests/integration/test_vllm_engine.py::test_vllm_label_probabilities_match_transformers"
  "transformers-engine-cuda=tests/integration/test_gpu_smoke.py::test_transformers_engine_runs_on_cuda_in_bf16"
  "deepspeed-bf16-step=tests/integration/test_gpu_smoke.py::test_one_deepspeed_bf16_step_on_cuda"
  "qlora-4bit=tests/integration/test_qlora_gpu.py::test_qlora_trains_over_a_4bit_base_and_saves_a_mergeable_safetensors_adapter"
)

say() { echo "gpu-smoke: $*"; }

no_gpu() {
  say "NO GPU: $1"
  say "these checks need an NVIDIA GPU and its driver; nothing was run (exit 2)"
  exit 2
}

# -- 1. a GPU, before anything is installed ---------------------------------------------------
command -v nvidia-smi >/dev/null 2>&1 || no_gpu "nvidia-smi not found"
gpus=$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1) \
  || no_gpu "nvidia-smi failed: ${gpus}"
[ -n "$gpus" ] || no_gpu "nvidia-smi lists no GPU"
say "GPU: $(head -n 1 <<<"$gpus")"

# -- 2. the GPU lock's environment --------------------------------------------------------------
if [ ! -f "$STAMP" ] || [ "$LOCK" -nt "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ]; then
  py=$(command -v python3.11 || command -v python3)
  "$py" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
    || { say "SETUP FAILED: the lock is for CPython 3.11; $py is not (set PATH)"; exit 3; }
  say "installing $LOCK into $VENV (several GB the first time)"
  { [ -x "$VENV/bin/python" ] || "$py" -m venv "$VENV"; } \
    && "$VENV/bin/python" -m pip install -q --upgrade pip packaging \
    && "$VENV/bin/python" scripts/lock_env.py build gpu --venv "$VENV" --with-vllm \
    || { say "SETUP FAILED: the GPU lock's environment could not be installed (exit 3)"; exit 3; }
  touch "$STAMP"
else
  say "reusing $VENV (newer than $LOCK)"
fi
PY=$VENV/bin/python

cuda=$("$PY" -c 'import torch; print(torch.cuda.is_available(), torch.version.cuda)' 2>&1) \
  || { say "SETUP FAILED: torch does not import in $VENV: $cuda"; exit 3; }
[[ $cuda == True* ]] || no_gpu "torch.cuda.is_available() is False in $VENV (torch CUDA ${cuda#* }; driver too old?)"

# -- 3. the checks -------------------------------------------------------------------------------
"$PY" -m hazard.demo.tiny_qwen >/dev/null || { say "SETUP FAILED: the tiny model"; exit 3; }
reports=$(mktemp -d)
logs=${GPU_SMOKE_LOGS:-runs/gpu-smoke}
mkdir -p "$logs"
args=()
for check in "${CHECKS[@]}"; do
  name=${check%%=*}
  test_id=${check#*=}
  say "running $name"
  timeout "$CHECK_TIMEOUT_S" "$PY" -m pytest -q -p no:cacheprovider -o junit_family=xunit1 \
    --junitxml="$reports/$name.xml" "$test_id" >"$logs/$name.log" 2>&1
  args+=("$name=$reports/$name.xml")
done

# -- 4. one line per check -------------------------------------------------------------------------
"$PY" scripts/gpu_smoke_report.py "${args[@]}"
status=$?
say "logs in $logs/"
exit "$status"
