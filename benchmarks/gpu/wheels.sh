#!/usr/bin/env bash
# Fetch into .whl/ (git-ignored through .git/info/exclude) the wheels the GPU machine's image lacks,
# on a machine where pip can download; check.sh installs them there before anything else.
# The image has torch, transformers, peft, accelerate, click, PyYAML, tqdm, matplotlib, but not
# diffusers or pydantic (see /work/.library/device/KINDS.md). Versions: those CI uses.
set -euo pipefail
cd "$(dirname "$0")/../.."
exclude="$(git rev-parse --git-path info/exclude)"
mkdir -p "$(dirname "$exclude")"
grep -qxF '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >> "$exclude"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
  diffusers==0.42.1 importlib-metadata==8.7.0 pydantic==2.13.4 pydantic-core==2.46.4 annotated-types==0.7.0 \
  typing-inspection==0.4.2
ls -l .whl
