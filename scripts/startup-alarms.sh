#!/usr/bin/env bash
# False alarms at start-up: RUNS short clean captures (1.5 h, no attack), each replayed
# from cold, so every detector's warm-up and young baselines are judged RUNS times.
# The built-in variants in turn (default, hyperscale-60hz, edge-small), seeds 1001…,
# start dates and hours spread over a week and the day.
#   scripts/startup-alarms.sh [RUNS=600] [FROM=1]
# BIN, if set, is the binary to run (no build); CONFIG, if set, is passed to `replay -c`.
# Prints, per detector, how many runs it
# raised an alert in and which (run number and variant).
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-600}
from=${2:-1}
bin=${BIN:-target/release/wattchdog}
config=()
if [ -n "${CONFIG:-}" ]; then config=(-c "$CONFIG"); fi
[ -n "${BIN:-}" ] || cargo build --release --quiet
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
variants=(default hyperscale-60hz edge-small)
: > "$work/found"
for s in $(seq "$from" "$runs"); do
  variant=${variants[$((s % 3))]}
  start=$(printf '2026-07-0%dT%02d:17:00Z' $((1 + s % 9)) $(((s * 7) % 24)))
  "$bin" simulate -o "$work/c.jsonl" --hours 1.5 --seed $((1000 + s)) --attacks none \
    --variant "$variant" --start "$start" > /dev/null 2>&1
  "$bin" replay "${config[@]}" --no-progress --json --alerts "$work/a.jsonl" "$work/c.jsonl" > /dev/null
  python3 - "$work/a.jsonl" "$s" "$variant" >> "$work/found" <<'EOF'
import json, sys
seen = {json.loads(l)["detector"] for l in open(sys.argv[1]) if l.strip()}
for d in sorted(seen):
    print(d, f"{sys.argv[2]}({sys.argv[3]})")
EOF
done
echo "runs $from..$runs"
if [ -s "$work/found" ]; then
  sort -k1,1 -s "$work/found" | awk '{r[$1] = r[$1] " " $2; n[$1]++}
    END {for (d in r) printf "%-14s %3d runs:%s\n", d, n[d], r[d]}'
else
  echo "no alert in any run"
fi
