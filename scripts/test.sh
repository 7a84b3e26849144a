#!/usr/bin/env bash
# Run every test layer (unit, media, trainer, cluster). Extra arguments go to pytest,
# e.g. `scripts/test.sh -m "not cluster"` for a quick subset.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${ICLORA_VENV:-$HOME/.cache/masked-iclora/venv}"
cd "$ROOT"
export PATH="$VENV/bin:$PATH"
"$VENV/bin/python" -m pytest "$@"
rc=$?
# Exit 5 means "no tests collected" (e.g. a -m filter matching nothing): not a failure.
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests" >&2
  exit 0
fi
exit "$rc"
