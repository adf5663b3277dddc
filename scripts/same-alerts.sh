#!/usr/bin/env bash
# usage: scripts/same-alerts.sh BEFORE_BINARY AFTER_BINARY [WORKDIR]
#
# Proof that a change which should not change behaviour did not: both binaries replay
# the bundled captures (each alone and both merged), write and replay three simulated
# 10 h captures with all eleven attacks (default facility; hyperscale-60hz at subtle
# intensity; a Modbus/TCP pcap), and score one; the alert JSONL (without `detected_at`,
# the wall time), the replay reports (without wall-clock fields and paths), the scores
# and the simulated captures must be byte-identical. Exit status 1 names what differs.
set -euo pipefail
before=$(realpath "$1"); after=$(realpath "$2")
work=${3:-$(mktemp -d)}
repo=$(cd "$(dirname "$0")/.." && pwd)

outputs() {
  local bin=$1 out=$2
  mkdir -p "$out"
  local strip='del(.detected_at)'
  for c in edge-power facility-cooling; do
    "$bin" replay "$repo/replay-data/$c.jsonl.zst" --alerts "$out/$c.alerts" \
      --report "$out/$c.report.json" --no-progress 2>/dev/null
  done
  "$bin" replay "$repo/replay-data/edge-power.jsonl.zst" "$repo/replay-data/facility-cooling.jsonl.zst" \
    --alerts "$out/both.alerts" --no-progress 2>/dev/null
  "$bin" simulate -o "$out/sim.jsonl.zst" --hours 10 --seed 11 --attacks all 2>/dev/null
  "$bin" simulate -o "$out/subtle.jsonl.zst" --hours 10 --seed 3 --attacks all \
    --intensity subtle --variant hyperscale-60hz 2>/dev/null
  "$bin" simulate -o "$out/wire.pcap" --hours 10 --seed 5 --attacks all \
    --write-config "$out/wire.toml" 2>/dev/null
  "$bin" replay "$out/sim.jsonl.zst" --alerts "$out/sim.alerts" --no-progress 2>/dev/null
  "$bin" replay "$out/subtle.jsonl.zst" --alerts "$out/subtle.alerts" --no-progress 2>/dev/null
  "$bin" replay "$out/wire.pcap" -c "$out/wire.toml" --alerts "$out/wire.alerts" --no-progress 2>/dev/null
  "$bin" eval "$out/sim.jsonl.zst" --json > "$out/sim.eval.json" 2>/dev/null
  for f in "$out"/*.alerts; do jq -c "$strip" "$f" > "$f.jsonl" && rm "$f"; done
  for f in "$out"/*.report.json; do
    jq -S 'del(.elapsed_s, .readings_per_s) | del(.alerts[].detected_at) | del(.files[].file)' "$f" > "$f.s"
    mv "$f.s" "$f"
  done
  sed -i "s#$out#OUT#g" "$out/wire.toml"
}

outputs "$before" "$work/before"
outputs "$after" "$work/after"
rc=0
for f in "$work"/before/*; do
  n=$(basename "$f")
  if cmp -s "$f" "$work/after/$n"; then echo "identical  $n"; else echo "DIFFERENT  $n"; rc=1; fi
done
echo "outputs in $work"
exit $rc
