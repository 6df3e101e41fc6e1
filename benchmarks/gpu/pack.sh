#!/usr/bin/env bash
# Pack a check's results folder for the device tool's return limits (at most 8 files of 16 MiB):
# check.md, check.json, results.tgz (everything but the checkpoints) and the newest checkpoint of
# each over-optimisation run (the one a resume loads; about 4 MB), 3 runs per archive, so that a
# later call on a fresh machine can continue the runs. Unpack here with: for f in DEST/*.tgz; do tar xzf "$f" -C benchmarks/gpu; done
#   bash benchmarks/gpu/pack.sh DEST [RESULTS (default benchmarks/gpu/results)]
set -euo pipefail
dest=$1
results=${2:-benchmarks/gpu/results}
parent=$(dirname "$results")
name=$(basename "$results")
mkdir -p "$dest"
cp "$results/check.md" "$results/check.json" "$dest/" 2>/dev/null || true
tar czf "$dest/results.tgz" -C "$parent" --exclude='checkpoints' "$name"
runs=()
for run in "$results"/overopt/runs/*/; do
  newest=$(ls "$run"checkpoints/ckpt_*.pt 2>/dev/null | sort | tail -n 1)
  rel=${newest#"$parent"/}
  [ -n "$newest" ] && runs+=("$rel" "${rel%.pt}.json")
done
for ((i = 0; i < ${#runs[@]}; i += 6)); do
  (cd "$parent" && tar czf "$dest/checkpoints_$((i / 6 + 1)).tgz" "${runs[@]:i:6}")
done
ls -l "$dest"
