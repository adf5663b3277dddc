#!/usr/bin/env bash
# One capture of many simulated sites side by side, as one instance sees them when it
# shares an operator's sites (Kafka): SITES sites (seeds 1..SITES, sites s1..sSITES) of
# the default facility, HOURS each, no attacks, merged in time order.
#   scripts/many-sites.sh OUT.jsonl [SITES=86] [HOURS=0.25]
# 86 sites are about 5,000 points (4.5 M readings in a quarter of an hour).
# BIN, if set, is the binary to run (no build).
set -euo pipefail
out=$(realpath -m "$1")
sites=${2:-86}
hours=${3:-0.25}
cd "$(dirname "$0")/.."
bin=${BIN:-target/release/wattchdog}
[ -n "${BIN:-}" ] || cargo build --release --quiet
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for i in $(seq 1 "$sites"); do
  "$bin" simulate --hours "$hours" --seed "$i" --attacks none --site "s$i" -o "$work/s$i.jsonl" 2>/dev/null
done
# A canonical line starts with its timestamp (`{"ts":"…"`, the fourth field between
# quotes), so a stable merge on it keeps each site's own order.
sort -m -s -t'"' -k4,4 "$work"/s*.jsonl >"$out"
