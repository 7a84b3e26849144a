#!/usr/bin/env bash
# One row per process (clean peak memory: an `ours` row's DeepSpeed engine keeps its model
# alive in the process, so rows after the first in run.sh carry earlier rows' weights).
#
#   device:  run(command="bash bench/gpu/rows.sh", carry=[".whl"], timeout_s=420)
#
# Rows in order of value; the whole script stops at DEADLINE seconds. The per-row JSON files
# are merged into one $OUT/train_step_rows_<device>.json (the device returns at most 8 files).
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
OUT="${OUT:-$ROOT/bench/results}"
DEADLINE="${DEADLINE:-370}"
EXTRA="${EXTRA:-}"
mkdir -p "$OUT"
LOG="$OUT/gpu_rows.log"
ROWS_DIR="$(mktemp -d)"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 3
  export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONUNBUFFERED=1 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
fast='attention_backends=cudnn|flash|efficient'
rows=(
  "768x768x89 anchor"
  "768x768x89 activation_checkpointing=every:2,$fast,fused_lora=true"
  "768x448x89 anchor"
  "768x448x89 activation_checkpointing=every:2,$fast,fused_lora=true"
  "768x768x89 activation_checkpointing=all,$fast,fused_lora=true,reference_downscale=2"
  "768x448x89 activation_checkpointing=all,$fast,fused_lora=true,reference_downscale=2"
  "768x768x89 activation_checkpointing=all,$fast,fused_lora=true,fp8_base=true,compile_blocks=true"
  "768x448x89 activation_checkpointing=none,$fast,fused_lora=true"
)
start=$SECONDS
date -u | tee "$LOG"
for row in "${rows[@]}"; do
  left=$((DEADLINE - (SECONDS - start)))
  [ "$left" -lt 30 ] && { echo "deadline: skipped $row" | tee -a "$LOG"; continue; }
  shape="${row%% *}" what="${row#* }"
  if [ "$what" = anchor ]; then sel=(--skip-defaults); else sel=(--skip-defaults --skip-anchor --variant "$what"); fi
  # shellcheck disable=SC2086
  timeout "$left" python3 bench/train_step_gpu.py --shapes "$shape" --steps 3 --warmup 2 "${sel[@]}" \
    --out "$ROWS_DIR" $EXTRA 2>&1 | grep -v -e SyntaxWarning -e 'Configuration class' | tee -a "$LOG"
  echo "row [$row] exit ${PIPESTATUS[0]} after $((SECONDS - start)) s" | tee -a "$LOG"
done
python3 - "$ROWS_DIR" "$OUT" <<'PY' 2>&1 | tee -a "$LOG"
import json, sys
from pathlib import Path
parts = [json.loads(p.read_text()) for p in sorted(Path(sys.argv[1]).glob("*.json"))]
if parts:
    merged = {k: parts[0][k] for k in ("device", "torch")}
    merged["note"] = "one row per process (bench/gpu/rows.sh)"
    merged["runs"] = [{k: p[k] for k in ("date", "command", "rows", "errors")} for p in parts]
    out = Path(sys.argv[2]) / f"train_step_rows_{merged['device'].replace(' ', '-')}.json"
    out.write_text(json.dumps(merged, indent=2))
    print("wrote", out, len(parts), "processes")
PY
