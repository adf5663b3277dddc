#!/usr/bin/env bash
# Records the checked-in packet capture tests/fixtures/pcap/loopback.pcap: real pymodbus
# clients against the simulated devices (`simulate --serve-modbus`) on loopback, captured
# by tcpdump. Needs root (tcpdump), pymodbus and a release build.
#
#   scripts/capture-modbus.sh [OUT_DIR]   (default tests/fixtures/pcap)
#
# Traffic, in wall time from the start of the capture:
#   0–6 s   the BMS (127.0.0.1) polls every device's read plan once a second
#   1 s     the BMS writes chiller-2's setpoint (12.00 °C)
#   4 s     a rogue workstation (127.0.0.2) writes chiller-2's setpoint (13.00 °C)
#   5 s     a scanner (127.0.0.3) reads unit ids 1–20 (the gateway serves 17)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-tests/fixtures/pcap}
port=15020
bin=target/release/wattchdog
[ -x "$bin" ] || cargo build --release --quiet
mkdir -p "$out"
tmp=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$tmp"' EXIT
"$bin" simulate --serve-modbus "127.0.0.1:$port" --hours 1 --attacks none --seed 7 \
  -o "$tmp/served.jsonl" --write-config "$tmp/run.toml" 2>/dev/null &
while [ ! -s "$tmp/run.toml" ]; do sleep 0.1; done
# The BMS's read plan: what `wattchdog run` would poll.
"$bin" check-config "$tmp/run.toml" --json > "$tmp/check.json"
unit=$(python3 -c 'import json,sys; print(next(d["unit"] for d in json.load(open(sys.argv[1]))["modbus"] if d["name"] == "chiller-2"))' "$tmp/check.json")
python3 - "$tmp" <<'PY'
import json, sys
tmp = sys.argv[1]
check = json.load(open(f"{tmp}/check.json"))
plan = [{"unit": d["unit"], "reads": [[r["function"], r["start"], r["count"]] for r in d["requests"]]}
        for d in check["modbus"]]
json.dump(plan, open(f"{tmp}/plan.json", "w"))
PY
tcpdump -i lo -n -U -s 0 -w "$out/loopback.pcap" "tcp port $port" 2>/dev/null &
dump=$!
sleep 1
t=tests/interop/modbus_traffic.py
python3 $t --port $port --source 127.0.0.1 poll "$tmp/plan.json" 6 1 >/dev/null &
poll=$!
sleep 1; python3 $t --port $port --source 127.0.0.1 write $unit 1201 1200 >/dev/null
sleep 3; python3 $t --port $port --source 127.0.0.2 write $unit 1201 1300 >/dev/null
sleep 1; python3 $t --port $port --source 127.0.0.3 scan 1 20 >/dev/null
wait $poll
sleep 0.5
kill -INT $dump; wait $dump 2>/dev/null || true
{
  sed -e "s/^address = .*/address = \"127.0.0.1:$port\"/" \
    -e "1s|^# Polls|# The devices of tests/fixtures/pcap/loopback.pcap (scripts/capture-modbus.sh):\n#|" "$tmp/run.toml" | grep -v '^\[clock\]\|^speed\|^epoch'
  printf '\n# The capture lasts seconds, not hours: the protocol detector learns what is\n# normal from its first 2 s (the BMS polling and writing).\n[detectors.protocol]\nlearn = "2s"\n'
} > "$out/loopback.toml"
ls -l "$out/loopback.pcap" "$out/loopback.toml"
