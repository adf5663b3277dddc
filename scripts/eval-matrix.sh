#!/usr/bin/env bash
# Detection quality on simulated facilities: for each variant, SEEDS seeds of every
# scenario at an intensity, plus a clean multi-day capture for false incidents.
#   scripts/eval-matrix.sh [INTENSITY=obvious] [SEEDS=10] [CLEAN_DAYS=7]
# Prints one `wattchdog eval` table per variant. Captures go to a temporary folder.
set -euo pipefail
cd "$(dirname "$0")/.."
intensity=${1:-obvious}
seeds=${2:-10}
clean_days=${3:-7}
bin=target/release/wattchdog
cargo build --release --quiet
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for variant in hyperscale-60hz edge-small colo-legacy default; do
  files=()
  for seed in $(seq 1 "$seeds"); do
    f="$work/$variant-$seed.jsonl.zst"
    "$bin" simulate --variant "$variant" --seed "$seed" --hours 10 --attacks all \
      --intensity "$intensity" --level 1 -o "$f" 2>/dev/null
    files+=("$f")
  done
  echo "== $variant: $seeds seeds × 11 scenarios, $intensity"
  "$bin" eval "${files[@]}"
  c="$work/$variant-clean.jsonl.zst"
  "$bin" simulate --variant "$variant" --seed 100 --hours $((24 * clean_days)) --attacks none --level 1 -o "$c" 2>/dev/null
  echo "== $variant: clean, $clean_days days"
  "$bin" eval "$c" | tail -n +2
done
