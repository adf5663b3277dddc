#!/usr/bin/env python3
"""Quick look at real data: replay every labelled SKAB file (../shared/datasets/skab,
wide CSV, default mapping: its `anomaly` column becomes label windows, kept out of the
readings) with the default config, and count the anomaly windows an alert starts in,
the median delay, and the alerts outside every window (+60 s).

    cargo build --release && scripts/skab-windows.py

Each SKAB run is about 18 minutes at 1 Hz, so the warm-up-heavy detectors (cusum 2 h,
physics) never judge; this measures ewma_z, flatline, replay and limits on unknown
metrics. The proper evaluation against SKAB's leaderboard belongs with the
multivariate detectors."""
import glob
import json
import subprocess
import sys
from datetime import datetime
from pathlib import Path

root = Path(__file__).resolve().parent.parent
data = root.parent / "shared" / "datasets" / "skab" / "data"
binary = root / "target" / "release" / "wattchdog"


def secs(ts):
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


files = sorted(glob.glob(str(data / "valve1" / "*.csv")) + glob.glob(str(data / "valve2" / "*.csv"))
               + glob.glob(str(data / "other" / "*.csv")))
if not files:
    sys.exit(f"no SKAB files under {data}")
windows = detected = outside = 0
delays = []
for f in files:
    out = subprocess.run([str(binary), "replay", f, "--json", "--no-progress"], capture_output=True, text=True, check=True)
    report = json.loads(out.stdout)
    wins = [w for w in report["files"][0]["label_windows"] if w["column"] == "anomaly"]
    for w in wins:
        windows += 1
        hits = [secs(a["ts"]) - secs(w["start"]) for a in report["alerts"]
                if secs(w["start"]) <= secs(a["ts"]) <= secs(w["end"])]
        if hits:
            detected += 1
            delays.append(min(hits))
    outside += sum(1 for a in report["alerts"]
                   if not any(secs(w["start"]) <= secs(a["ts"]) <= secs(w["end"]) + 60 for w in wins))
delays.sort()
median = delays[len(delays) // 2] if delays else None
print(f"{len(files)} files, {windows} anomaly windows, {detected} with an alert inside, "
      f"median delay {median} s, {outside} alerts outside every window")
