#!/usr/bin/env bash
# Detection quality on simulated facilities: for each variant, SEEDS seeds of every
# scenario at an intensity, plus a clean multi-day capture for false incidents.
#   scripts/eval-matrix.sh [INTENSITY=obvious] [SEEDS=10] [CLEAN_DAYS=7] [CONFIG]
# CONFIG, if given, is passed to `wattchdog eval -c` (e.g. a config that disables the
# protocol detector, to measure what the physical evidence alone catches).
# With CALIBRATE=<budget> (e.g. CALIBRATE=1/week), each variant is first calibrated
# (`wattchdog calibrate`, on CONFIG if given) on one clean day of its own (seed 200,
# neither an attacked seed nor the clean days scored) and judged with what it wrote.
# BIN, if set, is the binary to run (no build).
# Prints one `wattchdog eval` table per variant. Captures go to a temporary folder.
set -euo pipefail
cd "$(dirname "$0")/.."
intensity=${1:-obvious}
seeds=${2:-10}
clean_days=${3:-7}
config=()
if [ -n "${4:-}" ]; then config=(-c "$4"); fi
bin=${BIN:-target/release/wattchdog}
[ -n "${BIN:-}" ] || cargo build --release --quiet
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for variant in hyperscale-60hz edge-small colo-legacy default; do
  cfg=("${config[@]}")
  if [ -n "${CALIBRATE:-}" ]; then
    day="$work/$variant-day.jsonl.zst"
    "$bin" simulate --variant "$variant" --seed 200 --hours 24 --attacks none --level 1 -o "$day" 2>/dev/null
    "$bin" calibrate "${config[@]}" --false-alarms "$CALIBRATE" -o "$work/$variant-site" "$day" >/dev/null
    cfg=(-c "$work/$variant-site/wattchdog.toml")
    echo "== $variant: calibrated for $CALIBRATE on one clean day"
  fi
  files=()
  for seed in $(seq 1 "$seeds"); do
    f="$work/$variant-$seed.jsonl.zst"
    "$bin" simulate --variant "$variant" --seed "$seed" --hours 10 --attacks all \
      --intensity "$intensity" --level 1 -o "$f" 2>/dev/null
    files+=("$f")
  done
  echo "== $variant: $seeds seeds × 11 scenarios, $intensity"
  "$bin" eval "${cfg[@]}" "${files[@]}"
  c="$work/$variant-clean.jsonl.zst"
  "$bin" simulate --variant "$variant" --seed 100 --hours $((24 * clean_days)) --attacks none --level 1 -o "$c" 2>/dev/null
  echo "== $variant: clean, $clean_days days"
  "$bin" eval "${cfg[@]}" "$c" | tail -n +2
done
