#!/usr/bin/env bash
# Delay–false-alarm curves of the physics detector's three tests, each alone: for each
# variant, SEEDS seeds of every scenario at an intensity plus one clean day, replayed
# once per threshold (`wattchdog eval --sweep`) with every other detector off.
#   scripts/physics-curves.sh [INTENSITY=subtle] [SEEDS=3]
# Prints three curves per variant (cusum_threshold, sustained_threshold, threshold).
set -euo pipefail
cd "$(dirname "$0")/.."
intensity=${1:-subtle}
seeds=${2:-3}
bin=${BIN:-target/release/wattchdog}
[ -n "${BIN:-}" ] || cargo build --release --quiet
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
off=""
for d in limits ewma_z cusum flatline replay staleness ups breaker oscillation protocol \
  iforest envelope timescale; do
  off+=$'\n'"[detectors.$d]"$'\n'"enabled = false"
done
off1=1e9
printf '%s\n[detectors.physics]\nthreshold = %s\nsustained_threshold = %s\n' "$off" $off1 $off1 >"$work/cusum.toml"
printf '%s\n[detectors.physics]\nthreshold = %s\ncusum_threshold = %s\n' "$off" $off1 $off1 >"$work/sustained.toml"
printf '%s\n[detectors.physics]\nsustained_threshold = %s\ncusum_threshold = %s\n' "$off" $off1 $off1 >"$work/jump.toml"
for variant in hyperscale-60hz edge-small colo-legacy default; do
  files=()
  for seed in $(seq 1 "$seeds"); do
    f="$work/$variant-$seed.jsonl.zst"
    "$bin" simulate --variant "$variant" --seed "$seed" --hours 10 --attacks all \
      --intensity "$intensity" --level 1 -o "$f" 2>/dev/null
    files+=("$f")
  done
  c="$work/$variant-clean.jsonl.zst"
  "$bin" simulate --variant "$variant" --seed 100 --hours 24 --attacks none --level 1 -o "$c" 2>/dev/null
  files+=("$c")
  echo "== $variant: $seeds seeds × 11 scenarios, $intensity, and a clean day"
  "$bin" eval -c "$work/cusum.toml" --sweep physics.cusum_threshold=8,10,15,20,25,30,40 "${files[@]}"
  "$bin" eval -c "$work/sustained.toml" --sweep physics.sustained_threshold=3,4,6,8,10,15 "${files[@]}"
  "$bin" eval -c "$work/jump.toml" --sweep physics.threshold=2,3,4,6,8,12 "${files[@]}"
done
