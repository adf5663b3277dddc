#!/usr/bin/env bash
# Detection over SNMP (UPS-MIB with traps, APC rPDU2) or BACnet/IP (chillers and CRAHs,
# ReadPropertyMultiple and COV) against the same facility over Modbus: the simulator
# serves it live at SPEED×, `wattchdog run` collects it on the config
# `simulate --write-config` writes, and `wattchdog eval` scores the live alerts against
# the labels. Prints each scenario's detection delay per transport.
#
#   scripts/transport-vs-modbus.sh snmp|bacnet [SPEED] [SEED]      (defaults 300, 5)
set -euo pipefail
TRANSPORT=${1:?snmp or bacnet}
SPEED=${2:-300}
SEED=${3:-5}
case "$TRANSPORT" in
  snmp) ATTACKS=ups-forced-bypass,ups-battery-drain,load-oscillation,telemetry-blackout ;;
  bacnet) ATTACKS=chiller-setpoint-tamper,chiller-sensor-spoof,sensor-replay,flow-drift ;;
  *) echo "transport: snmp or bacnet" >&2; exit 2 ;;
esac
HOURS=5.2   # the 150-minute warm-up and four 40-minute attack slots
BIN=${WATTCHDOG:-target/release/wattchdog}
out=${KEEP:-$(mktemp -d)}
[ -n "${KEEP:-}" ] || trap 'rm -rf "$out"' EXIT
free_udp() { python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
for transport in modbus "$TRANSPORT"; do
  d="$out/$transport"; mkdir -p "$d"
  extra=()
  case "$transport" in
    snmp) extra=(--serve-snmp 127.0.0.1:0 --snmp-trap-to "127.0.0.1:$(free_udp)") ;;
    bacnet) extra=(--serve-bacnet 127.0.0.1:0) ;;
  esac
  "$BIN" simulate --serve-modbus 127.0.0.1:0 "${extra[@]}" --speed "$SPEED" --hours "$HOURS" \
    --seed "$SEED" --attacks "$ATTACKS" -o "$d/served.jsonl" --write-config "$d/run.toml" 2>/dev/null &
  sim=$!
  while [ ! -f "$d/run.toml" ]; do sleep 0.1; done
  wall=$(python3 -c "print(int($HOURS*3600/$SPEED*1000 - 1500))")
  "$BIN" run -c "$d/run.toml" --duration "${wall}ms" --alerts "$d/live.jsonl" 2>/dev/null
  wait "$sim" || true
  "$BIN" eval "$d/served.jsonl" --alerts "$d/live.jsonl" --json > "$d/score.json"
  python3 - "$transport" "$d/score.json" <<'PY'
import json, sys
t, path = sys.argv[1], sys.argv[2]
s = json.load(open(path))
for name, sc in s["scenarios"].items():
    first = ",".join(sc["first_detectors"])
    print(f'{t:7} {name:24} detected {sc["detected"]}/{sc["labelled"]} delay {sc["median_delay_s"]} s (first: {first})')
print(f'{t:7} false alerts {s["false_alerts"]}, false incidents {s["false_incidents"]}: {s.get("false_incident_starts", "")}')
PY
done
