#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment and install everything the
# demo and the tests need. Prints nothing but progress on stderr; the venv path
# is $ICLORA_VENV (default ~/.cache/masked-iclora/venv).
#
# Heavy dependencies (torch, DeepSpeed, ltx-core) are installed once and reused
# while pyproject.toml and this script are unchanged; the project itself is
# re-installed (editable, no deps) on every call so the venv follows the checkout.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${ICLORA_VENV:-$HOME/.cache/masked-iclora/venv}"
PY="${PYTHON:-python3}"
log() { printf '[setup] %s\n' "$*" >&2; }

# The local cluster's real node (docs/local-cluster.md, "Real containers") needs a few Debian
# packages: buildah and debootstrap build the images, the CNI plugins and iptables network the
# pods, libseccomp-dev lets runc build with seccomp. Installed once, as root.
NODE_PACKAGES="buildah debootstrap containernetworking-plugins iptables iproute2 libseccomp-dev pkg-config"
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  missing="$(for p in $NODE_PACKAGES; do dpkg -s "$p" >/dev/null 2>&1 || printf '%s ' "$p"; done)"
  if [ -n "$missing" ]; then
    log "installing Debian packages for the real-container node: $missing"
    apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >&2
  fi
fi

# constraints.txt pins every version: an upstream release cannot change what CI installs.
CONSTRAINTS="$ROOT/constraints.txt"
stamp_now="$(cat "$ROOT/pyproject.toml" "$ROOT/dev/pyproject.toml" "$ROOT/scripts/setup-env.sh" "$CONSTRAINTS" | sha256sum | cut -d' ' -f1)"
if [ ! -x "$VENV/bin/python" ]; then
  log "creating virtual environment $VENV"
  "$PY" -m venv "$VENV"
fi
if [ "$(cat "$VENV/.iclora-stamp" 2>/dev/null)" != "$stamp_now" ]; then
  start=$(date +%s)
  log "installing dependencies (first run: a few minutes, torch is large)"
  "$VENV/bin/pip" install -q -U pip wheel setuptools
  # DeepSpeed builds from source; its CUDA ops are JIT-compiled where a GPU exists.
  # The development tooling is its own distribution (dev/), named by the `dev` extra.
  DS_BUILD_OPS=0 "$VENV/bin/pip" install -q -c "$CONSTRAINTS" -e "$ROOT[operator,trainer,dev]" -e "$ROOT/dev"
  # ltx-core's declared dependencies pull a CUDA torchaudio that breaks CPU
  # imports; its real dependencies are listed in our `trainer` extra.
  "$VENV/bin/pip" install -q -c "$CONSTRAINTS" --no-deps "ltx-core==1.0.0" "ltx-pipelines==1.0.0"
  echo "$stamp_now" > "$VENV/.iclora-stamp"
  log "dependencies installed in $(( $(date +%s) - start )) s"
else
  "$VENV/bin/pip" install -q -c "$CONSTRAINTS" --no-deps -e "$ROOT" -e "$ROOT/dev"
fi
