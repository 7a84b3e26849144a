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
PER_SHAPE="${PER_SHAPE_SECONDS:-280}"
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
# The 40 GiB goal leaves little room for kept activations. `python bench/activation_memory.py`
# (CPU, bench/results/activation_memory.json) predicts, with every block checkpointed, 31.5 /
# 35.0 GiB at 768x448x89 / 768x768x89 (the issue's anchor measured 33.6 / 38.8: the prediction
# runs 2-4 GiB low); a block stored whole costs 1.9 / 3.3 GiB more, a block keeping only its
# attention outputs (selective:K) 0.12 / 0.21 GiB. So the candidates under 40 GiB checkpoint
# every block, keep what attention they can afford, and win with kernels: fast attention,
# fused LoRA, FP8 matmuls (which need torch.compile to pay), compiled blocks. The every:2 row
# shows the speed memory would buy; the reference_downscale=2 row measures the half-resolution
# reference (spec.referenceDownscaleFactor 2). Likely winners first: the JSON is saved after
# each row.
fast='attention_backends=cudnn|flash|efficient'
variants_for() {
  local keep="selective:6"
  [ "$1" = "768x448x89" ] && keep="selective:40"
  printf '%s\n' \
    "activation_checkpointing=all,$fast,fused_lora=true" \
    "activation_checkpointing=all,$fast,fused_lora=true,fp8_base=true,compile_blocks=true" \
    "activation_checkpointing=$keep,$fast,fused_lora=true,fp8_base=true,compile_blocks=true" \
    "activation_checkpointing=all,$fast,fused_lora=true,reference_downscale=2" \
    "activation_checkpointing=all,$fast,compile_blocks=true" \
    "activation_checkpointing=every:2,$fast,fused_lora=true"
}
for shape in $SHAPES; do
  args=()
  while IFS= read -r v; do args+=(--variant "$v"); done < <(variants_for "$shape")
  # shellcheck disable=SC2086
  timeout "$PER_SHAPE" python3 bench/train_step_gpu.py --shapes "$shape" --steps 3 --warmup 2 \
    --validation "${args[@]}" --out "$OUT" $EXTRA 2>&1 | tee -a "$LOG"
  echo "shape $shape exit ${PIPESTATUS[0]}" | tee -a "$LOG"
done
ls -la "$OUT"
