#!/usr/bin/env bash
# Rebuilds the isolation-forest models in models/ from the simulator's normal operation:
# one day of three facility variants (default, hyperscale-60hz, edge-small; colo-legacy
# is held out for evaluation), no attacks, then `wattchdog train` per device kind.
# Deterministic: the same build writes the same files, byte for byte.
#
#   scripts/train-models.sh [OUT_DIR]      (default: models)
set -euo pipefail
out=${1:-models}
cargo build --release --locked --quiet
bin=target/release/wattchdog
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
inputs=()
for variant in default hyperscale-60hz edge-small; do
  "$bin" simulate -o "$work/normal-$variant.jsonl.zst" --hours 24 --seed 21 \
    --attacks none --variant "$variant"
  inputs+=("$work/normal-$variant.jsonl.zst")
done
mkdir -p "$out"
for kind in ups chiller crah grid_meter env; do
  "$bin" train "${inputs[@]}" --kind "$kind" -o "$out/$kind.iforest.json"
done
