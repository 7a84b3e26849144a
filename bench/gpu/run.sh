#!/usr/bin/env bash
# One device session for issue 8: ours (defaults and lever variants) and the anchor, both
# shapes, and the validation sampler's cost, in a single run on the GPU machine.
#
#   here:    bash bench/gpu/wheels.sh                      # once: wheels the image lacks -> .whl/
#   device:  run(command="bash bench/gpu/run.sh", carry=[".whl"], timeout_s=600)
#
# Each shape is its own process under a time limit, so a slow variant costs its shape's rows,
# not the whole session. JSON results and the log land in $OUT (and in bench/results/ there).
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
OUT="${OUT:-$ROOT/bench/results}"
mkdir -p "$OUT"
LOG="$OUT/gpu_session.log"
PER_SHAPE="${PER_SHAPE_SECONDS:-275}"
SHAPES="${SHAPES:-768x448x89 768x768x89}"
EXTRA="${EXTRA:-}"  # e.g. "--tiny --device cpu" for a rehearsal without a GPU
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 3
  export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONUNBUFFERED=1 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
{
  date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  python3 -c "import torch, torchao, deepspeed, ltx_core; print('torch', torch.__version__, 'torchao', torchao.__version__, 'deepspeed', deepspeed.__version__)"
} 2>&1 | tee "$LOG"
fast='attention_backends=cudnn|flash|efficient'
variants=(
  --variant "activation_checkpointing=every:2,$fast"
  --variant "activation_checkpointing=every:2,$fast,fused_lora=true"
  --variant "activation_checkpointing=blocks:16,$fast,fp8_base=true,fused_lora=true"
  --variant "activation_checkpointing=every:2,$fast,compile_blocks=true"
)
for shape in $SHAPES; do
  # shellcheck disable=SC2086
  timeout "$PER_SHAPE" python3 bench/train_step_gpu.py --shapes "$shape" --steps 3 --warmup 2 \
    --validation "${variants[@]}" --out "$OUT" $EXTRA 2>&1 | tee -a "$LOG"
  echo "shape $shape exit ${PIPESTATUS[0]}" | tee -a "$LOG"
done
ls -la "$OUT"
