#!/usr/bin/env bash
# CPU cost of live Modbus collection plus detection: serves the simulated facility at
# SPEED× real time on loopback, polls it with `wattchdog run` for SECONDS of wall time,
# and prints the collector's CPU per 1,000 points/s.
#   scripts/modbus-load.sh [SPEED] [SECONDS]
set -euo pipefail
SPEED=${1:-120}
SECONDS_=${2:-30}
BIN=target/release/wattchdog
cargo build --release --quiet
dir=$(mktemp -d)
trap 'kill $server 2>/dev/null || true; rm -rf "$dir"' EXIT
$BIN simulate --serve-modbus 127.0.0.1:0 --speed "$SPEED" --hours 48 --attacks none \
  -o "$dir/served.jsonl" --write-config "$dir/run.toml" 2>/dev/null &
server=$!
while [ ! -f "$dir/run.toml" ]; do sleep 0.1; done
/usr/bin/time -f '%U %S %e' -o "$dir/time" \
  $BIN run -c "$dir/run.toml" --duration "${SECONDS_}s" --alerts "$dir/alerts.jsonl" \
  --report "$dir/report.json" 2>/dev/null
read -r user sys wall < "$dir/time"
python3 - "$dir/report.json" "$user" "$sys" "$wall" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
user, sys_, wall = map(float, sys.argv[2:5])
points = r["pipeline"]["readings"]
reqs = sum(d["requests"] for d in r["devices"])
rate = points / wall
cpu = (user + sys_) / wall
print(f"{len(r['devices'])} devices, {reqs/wall:,.0f} requests/s, {rate:,.0f} points/s, "
      f"CPU {cpu*100:.1f}% of one core = {cpu*100/(rate/1000):.2f}% per 1,000 points/s")
PY
