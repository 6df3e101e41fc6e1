#!/usr/bin/env bash
# One command installs everything: Debian packages the tests need, then the project and its
# Python dependencies (CPU torch) into the active Python environment.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [[ $(id -u) -ne 0 ]] && command -v sudo >/dev/null; then SUDO="sudo"; fi

# Debian packages: Chromium for the browser tests (never `playwright install`), Redis and
# PostgreSQL servers for the store/queue tests.
debs=(chromium redis-server postgresql fonts-dejavu-core)
missing=()
for p in "${debs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if ((${#missing[@]})); then
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# torch==2.13.0 in the same command: the CPU wheel; anything looser pulls a CUDA build.
python -m pip install -q "torch==2.13.0" -e ".[dev]"
