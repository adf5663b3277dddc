#!/usr/bin/env python3
"""SKAB (Skoltech Anomaly Benchmark) scored with its own outlier protocol: every
labelled run replayed on its own through the ordinary wide-CSV path
(replay-data/benchmarks/skab.toml), the first 400 rows of each run being the detectors'
warm-up (SKAB's training part), and the rest scored row by row: a row is predicted
anomalous when an alert (of the chosen detectors) is open at its time, from its first
finding to its last. TP/FP/FN/TN are summed over all runs' test rows;
F1 = TP / (TP + (FN + FP) / 2), FAR = FP / (FP + TN), MAR = FN / (FN + TP), as in SKAB's
core/metrics.py.

The changepoint problem is scored as SKAB's leaderboard does (NAB scoring with its
"improved" scale function): every labelled changepoint of the test part opens a 60 s
window to its right (a window that would overlap the previous one starts where that
one ends); the predicted changepoints are the rows where the row-wise prediction
changes (an alert opening or closing). In each window the first prediction earns
y(position), y going from A_TP at the window's start to A_FP at its end along a tanh;
a window without one costs A_FN; every prediction outside the windows costs A_FP.
Summed over all runs, 100 × (score − null) / (perfect − null) per profile
(standard, low FP, low FN).

    cargo build --release
    scripts/skab-eval.py ../shared/datasets/skab/data [-c CONFIG] [--detectors a,b] [--files N] [--mapping M]
    scripts/skab-eval.py --self-test      # the scorer against a hand-computed case

The data is read where it lies (GPL-3.0; never copied into this project)."""
import argparse
import csv
import glob
import json
import math
import subprocess
from datetime import datetime, timezone
from pathlib import Path

root = Path(__file__).resolve().parent.parent
TRAIN = 400
WINDOW_MS = 60_000
PROFILES = {  # A_TP, A_FP, A_FN (SKAB core/metrics.py defaults)
    "standard": (1.0, -0.11, -1.0),
    "low_fp": (1.0, -0.22, -1.0),
    "low_fn": (1.0, -0.11, -2.0),
}


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
        return [(ms(row["datetime"]), float(row["anomaly"]) > 0.5, float(row["changepoint"]) > 0.5)
                for row in r]


def windows_of(changepoints):
    """60 s windows to the right of each changepoint (ms), overlaps cut from the right one."""
    w = [[t, t + WINDOW_MS] for t in changepoints]
    for i in range(len(w) - 1):
        if w[i][1] >= w[i + 1][0]:
            w[i + 1][0] = w[i][1]
    return w


def scale(start, hit, end, a_tp, a_fp):
    """SKAB's improved NAB scale: A_TP at the window's start to A_FP at its end."""
    steps = 1000
    k = min(int((hit - start) / (end - start) * steps), steps - 1) if end > start else 0
    x = -math.pi / 2 + math.pi * k / (steps - 1)
    return (a_tp - a_fp) / 2 * -math.tanh(x) / math.tanh(math.pi / 2) + (a_tp - a_fp) / 2 + a_fp


def nab_matrix(windows, predictions):
    """[score, null, perfect] per profile for one run: windows [[start, end]] in order,
    predictions: sorted times of predicted changepoints."""
    hits, fps = [], 0
    for t in predictions:
        if not any(s <= t <= e for s, e in windows):
            fps += 1
    for s, e in windows:
        inside = [t for t in predictions if s <= t <= e]
        hits.append((s, inside[0], e) if inside else None)
    out = {}
    for name, (a_tp, a_fp, a_fn) in PROFILES.items():
        score = a_fp * fps + sum(a_fn if h is None else scale(*h, a_tp, a_fp) for h in hits)
        out[name] = (score, a_fn * len(windows), a_tp * len(windows))
    return out


def nab_total(matrices):
    out = {}
    for name in PROFILES:
        score, null, perfect = (sum(m[name][i] for m in matrices) for i in range(3))
        out[name] = round(100 * (score - null) / (perfect - null), 2) if perfect != null else 0.0
    return out


def changes(times, prediction):
    """Times where the row-wise prediction flips (not the first row)."""
    return [t for i, t in enumerate(times) if i > 0 and prediction[i] != prediction[i - 1]]


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
    # Changepoints at 0 s and 30 s: windows [0, 60 s] and [60 s, 90 s] (the second cut).
    w = windows_of([0, 30_000])
    assert w == [[0, 60_000], [60_000, 90_000]], w
    # A prediction at the start of a window earns A_TP, at its end A_FP; halfway, the mean.
    assert abs(scale(0, 0, 60_000, 1.0, -0.11) - 1.0) < 1e-12
    assert abs(scale(0, 60_000, 60_000, 1.0, -0.11) + 0.11) < 1e-12
    assert abs(scale(0, 30_000, 60_000, 1.0, -0.11) - 0.445) < 0.01
    # Predictions at 0 s (first window, full credit), 200 s (outside: one FP); second
    # window missed. Standard: 1 − 0.11 − 1 = −0.11; null −2, perfect 2 → 100 × 1.89 / 4.
    m = nab_matrix(w, [0, 200_000])
    assert abs(m["standard"][0] + 0.11) < 1e-12 and m["standard"][1:] == (-2.0, 2.0), m
    assert nab_total([m])["standard"] == 47.25, nab_total([m])
    # Low FN: 1 − 0.11 − 2 = −1.11; null −4, perfect 2 → 100 × 2.89 / 6.
    assert nab_total([m])["low_fn"] == 48.17, nab_total([m])
    assert changes([0, 1, 2, 3], [True, True, False, True]) == [2, 3]
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
    matrices, missed, false_cps = [], 0, 0
    for path in files:
        out = subprocess.run(
            [a.binary, "replay", "--json", "--no-progress", "--mapping",
             str(a.mapping), "-c", a.config, path],
            check=True, capture_output=True, text=True).stdout
        report = json.loads(out)
        alerts = [(iso_ms(x["ts"]), iso_ms(x["last_seen"])) for x in report["alerts"]
                  if not keep or x["detector"] in keep]
        c = [0, 0, 0, 0]
        test = rows_of(path)[TRAIN:]
        pred = [predicted(alerts, ts) for ts, _, _ in test]
        for (ts, truth, _), p in zip(test, pred):
            c[0 if truth and p else 1 if p else 2 if truth else 3] += 1
        total = [x + y for x, y in zip(total, c)]
        windows = windows_of([ts for ts, _, cp in test if cp])
        cps = changes([ts for ts, _, _ in test], pred)
        matrices.append(nab_matrix(windows, cps))
        missed += sum(1 for s, e in windows if not any(s <= t <= e for t in cps))
        false_cps += sum(1 for t in cps if not any(s <= t <= e for s, e in windows))
        f1, far, mar = score(c)
        print(f"{Path(path).parent.name}/{Path(path).name:8} F1 {f1:.3f} FAR {far:5.1f} % MAR {mar:5.1f} %  ({len(alerts)} alerts)")
    f1, far, mar = score(total)
    print(json.dumps({"files": len(files), "tp": total[0], "fp": total[1], "fn": total[2], "tn": total[3],
                      "f1": round(f1, 3), "far_pct": round(far, 2), "mar_pct": round(mar, 2),
                      "nab": nab_total(matrices), "changepoints": sum(len(m["standard"]) and int(m["standard"][2]) for m in matrices),
                      "missed_cps": missed, "false_cps": false_cps}))


if __name__ == "__main__":
    main()
