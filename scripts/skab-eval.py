#!/usr/bin/env python3
"""SKAB (Skoltech Anomaly Benchmark) scored with its own outlier protocol: every
labelled run replayed on its own through the ordinary wide-CSV path
(replay-data/benchmarks/skab.toml), the first 400 rows of each run being the detectors'
warm-up (SKAB's training part), and the rest scored row by row: a row is predicted
anomalous when an alert (of the chosen detectors) is open at its time, from its first
finding to its last. TP/FP/FN/TN are summed over all runs' test rows;
F1 = TP / (TP + (FN + FP) / 2), FAR = FP / (FP + TN), MAR = FN / (FN + TP), as in SKAB's
core/metrics.py.

    cargo build --release
    scripts/skab-eval.py ../shared/datasets/skab/data [-c CONFIG] [--detectors a,b] [--files N] [--mapping M]
    scripts/skab-eval.py --self-test      # the scorer against a hand-computed case

The data is read where it lies (GPL-3.0; never copied into this project)."""
import argparse
import csv
import glob
import json
import subprocess
from datetime import datetime, timezone
from pathlib import Path

root = Path(__file__).resolve().parent.parent
TRAIN = 400


def ms(text):
    return int(datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc).timestamp() * 1000)


def iso_ms(text):
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)


def score(counts):
    tp, fp, fn, tn = counts
    f1 = tp / (tp + (fn + fp) / 2) if tp + fn + fp else 0.0
    far = 100.0 * fp / (fp + tn) if fp + tn else 0.0
    mar = 100.0 * fn / (fn + tp) if fn + tp else 0.0
    return f1, far, mar


def rows_of(path):
    with open(path, newline="") as f:
        r = csv.DictReader(f, delimiter=";")
        return [(ms(row["datetime"]), float(row["anomaly"]) > 0.5) for row in r]


def predicted(alerts, ts):
    return any(a[0] <= ts <= a[1] for a in alerts)


def self_test():
    # 10 test rows: truth 0011110000, alert open over rows 3..6 (ms 3000..6000).
    truth = [False, False, True, True, True, True, False, False, False, False]
    alerts = [(3000, 6000)]
    c = [0, 0, 0, 0]
    for i, t in enumerate(truth):
        p = predicted(alerts, i * 1000)
        c[0 if t and p else 1 if p else 2 if t else 3] += 1
    assert c == [3, 1, 1, 5], c  # TP rows 3,4,5; FP row 6; FN row 2; TN the rest
    f1, far, mar = score(c)
    # F1 = 3 / (3 + (1 + 1) / 2) = 0.75; FAR = 1 / 6; MAR = 1 / 4.
    assert abs(f1 - 0.75) < 1e-12 and abs(far - 100 / 6) < 1e-12 and abs(mar - 25.0) < 1e-12
    assert score((0, 0, 0, 7)) == (0.0, 0.0, 0.0), "nothing to find, nothing found"
    print("skab scorer: hand-computed cases pass")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("data", nargs="?", help="the SKAB data folder (valve1/, valve2/, other/)")
    ap.add_argument("--self-test", action="store_true", help="check the scorer on hand-computed cases")
    ap.add_argument("-c", "--config", default=str(root / "replay-data/benchmarks/skab-residual.toml"))
    ap.add_argument("--detectors", default="", help="only alerts of these detectors (comma-separated)")
    ap.add_argument("--files", type=int, default=0, help="only the first N runs (a quick check)")
    ap.add_argument("--binary", default=str(root / "target/release/wattchdog"))
    ap.add_argument("--mapping", default=str(root / "replay-data/benchmarks/skab.toml"),
                    help="the wide-CSV mapping (e.g. one that ignores some columns)")
    a = ap.parse_args()
    if a.self_test:
        self_test()
        return
    if not a.data:
        ap.error("give the SKAB data folder")
    files = sorted(glob.glob(f"{a.data}/valve1/*.csv")) + sorted(glob.glob(f"{a.data}/valve2/*.csv")) \
        + sorted(glob.glob(f"{a.data}/other/*.csv"))
    if a.files:
        files = files[: a.files]
    keep = set(filter(None, a.detectors.split(",")))
    total = [0, 0, 0, 0]
    for path in files:
        out = subprocess.run(
            [a.binary, "replay", "--json", "--no-progress", "--mapping",
             str(a.mapping), "-c", a.config, path],
            check=True, capture_output=True, text=True).stdout
        report = json.loads(out)
        alerts = [(iso_ms(x["ts"]), iso_ms(x["last_seen"])) for x in report["alerts"]
                  if not keep or x["detector"] in keep]
        c = [0, 0, 0, 0]
        for ts, truth in rows_of(path)[TRAIN:]:
            p = predicted(alerts, ts)
            c[0 if truth and p else 1 if p else 2 if truth else 3] += 1
        total = [x + y for x, y in zip(total, c)]
        f1, far, mar = score(c)
        print(f"{Path(path).parent.name}/{Path(path).name:8} F1 {f1:.3f} FAR {far:5.1f} % MAR {mar:5.1f} %  ({len(alerts)} alerts)")
    f1, far, mar = score(total)
    print(json.dumps({"files": len(files), "tp": total[0], "fp": total[1], "fn": total[2], "tn": total[3],
                      "f1": round(f1, 3), "far_pct": round(far, 2), "mar_pct": round(mar, 2)}))


if __name__ == "__main__":
    main()
