#!/usr/bin/env bash
# The README's first command. Until the embedded end-to-end demo lands (issue 10),
# it validates the recommended configuration and prints its effective spec.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${ICLORA_VENV:-$HOME/.cache/masked-iclora/venv}"
cd "$ROOT"
"$VENV/bin/iclora" validate examples/recommended.yaml
