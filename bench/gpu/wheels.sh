#!/usr/bin/env bash
# Download (here, where package registries are reachable) the Python wheels that the GPU
# machine's image lacks, into .whl/ at the repository root (ignored by git, carried to the
# device with `carry: [".whl"]`). The image has torch, peft, einops, safetensors, numpy,
# transformers; it lacks ltx-core, pydantic, DeepSpeed and torchao (0.17 pairs with the image's torch 2.11).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PY="${PYTHON:-$HOME/.cache/masked-iclora/venv/bin/python}"
DEST="$ROOT/.whl"
grep -qxF '/.whl/' "$ROOT/.git/info/exclude" 2>/dev/null || echo '/.whl/' >> "$ROOT/.git/info/exclude"
rm -rf "$DEST" && mkdir -p "$DEST"
platforms=()
for n in 17 27 28 34; do platforms+=(--platform "manylinux_2_${n}_x86_64"); done
fetch() {
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" --platform manylinux2014_x86_64 --platform any -d "$DEST" "$@"
}
fetch "ltx-core==1.0.0" "pydantic==$("$PY" -c "import pydantic; print(pydantic.VERSION)")" "annotated-types" "typing-inspection" hjson "torchao==0.17.0"
# pydantic-core must be the exact version this pydantic pins.
core="$(unzip -p "$DEST"/pydantic-2*.whl '*/METADATA' | sed -n 's/^Requires-Dist: pydantic-core==\([0-9.]*\).*/\1/p')"
fetch "pydantic-core==$core"
# DeepSpeed ships as an sdist: build a pure-Python wheel (ops are JIT-built where needed).
DS_BUILD_OPS=0 "$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$DEST" "deepspeed==0.19.8"
ls -la "$DEST"
du -sh "$DEST"
