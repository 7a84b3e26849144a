#!/usr/bin/env bash
# The README's first command: the whole product on an embedded local cluster (see `iclora demo --help`).
# Extra arguments go to `iclora demo`, e.g. `make demo ARGS=--keep`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${ICLORA_VENV:-$HOME/.cache/masked-iclora/venv}"
cd "$ROOT"
export PATH="$VENV/bin:$PATH"
exec "$VENV/bin/iclora" demo "$@"
