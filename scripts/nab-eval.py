#!/usr/bin/env python3
"""NAB (Numenta Anomaly Benchmark), the whole corpus in ../shared/datasets/nab (58
series), replayed through the ordinary wide-CSV path (one device per file, kind
`other`, default mapping), scored with NAB's own window rule and profiles:
a detection is a row where an alert opens; the earliest detection in each labelled
window earns A_TP × scaledSigmoid(position in the window), every detection outside the
windows costs A_FP × scaledSigmoid(distance past the previous window) (−A_FP before the
first), each window without a detection −A_FN; the probationary first
min(15 %, 750) rows are not scored. Per file: raw scores, comparable with
per_file_standard_scores.upstream.csv (null detector: −A_FN × windows). Over the
corpus: the raw scores summed and normalised as NAB does, 100 × (raw − null) /
(perfect − null), the null detector detecting nothing and the perfect one each window
at its first row; printed beside final_results.upstream.json.

    cargo build --release
    scripts/nab-eval.py ../shared/datasets/nab [-c CONFIG] [--detectors a,b] [--files SUBSTR,…]
    scripts/nab-eval.py ../shared/datasets/nab --calibrate 1/week [--block 10m]
    scripts/nab-eval.py --self-test      # the scorer against hand-computed cases

The data is read where it lies (MIT; never copied into this project). No setting is
chosen per series: one config for the corpus, as NAB's rules require. With
--calibrate BUDGET, each series is first calibrated (`wattchdog calibrate`, on CONFIG if
given) on its probationary rows alone — the only part NAB lets a detector learn from
before it is scored — and replayed whole with the config that writes."""
import argparse
import bisect
import csv
import json
import math
import subprocess
import tempfile
from datetime import datetime, timezone
from pathlib import Path

root = Path(__file__).resolve().parent.parent
PROFILES = {  # A_TP, A_FP, A_FN (NAB config/profiles.json)
    "standard": (1.0, 0.11, 1.0),
    "reward_low_FP_rate": (1.0, 0.22, 1.0),
    "reward_low_FN_rate": (1.0, 0.11, 2.0),
}
FILES = ["realKnownCause/machine_temperature_system_failure.csv",
         "realKnownCause/ambient_temperature_system_failure.csv"]


def scaled_sigmoid(x):
    return -1.0 if x > 3.0 else 2.0 / (1.0 + math.exp(5.0 * x)) - 1.0


def nab_score(n_rows, windows, detections, profile):
    """windows: [(first_row, last_row)] in order; detections: row indices. NAB flags
    rows, so alerts opening on the same row are one detection."""
    a_tp, a_fp, a_fn = profile
    probation = min(math.floor(0.15 * n_rows), 750)
    best = [None] * len(windows)
    fp = 0.0
    for i in sorted(set(detections)):
        if i < probation:
            continue
        w = next((k for k, (s, e) in enumerate(windows) if s <= i <= e), None)
        if w is not None:
            s, e = windows[w]
            pos = -(e - i + 1) / float(e - s + 1)
            score = scaled_sigmoid(pos) * a_tp
            best[w] = score if best[w] is None else max(best[w], score)
        else:
            prev = [k for k, (s, e) in enumerate(windows) if e < i]
            if not prev:
                fp += -1.0 * a_fp
            else:
                s, e = windows[prev[-1]]
                fp += scaled_sigmoid(abs(e - i) / float(e - s)) * a_fp
    return sum(b for b in best if b is not None) + fp - a_fn * sum(1 for b in best if b is None)


def self_test():
    # 100 rows (probation 15), one window rows 50..59.
    w = [(50, 59)]
    std = PROFILES["standard"]
    assert nab_score(100, w, [], std) == -1.0, "a miss costs A_FN"
    # Detection at the window's first row: position −1 → 2/(1+e^−5) − 1 = 0.98661.
    assert abs(nab_score(100, w, [50], std) - 0.986614) < 1e-6
    # Last row: position −0.1 → 2/(1+e^−0.5) − 1 = 0.244919.
    assert abs(nab_score(100, w, [59], std) - 0.244919) < 1e-6
    # Only the best detection of a window counts.
    assert abs(nab_score(100, w, [50, 55, 59], std) - 0.986614) < 1e-6
    # The corpus normalisation: nothing is 0, every window at its first row 100.
    files = {"a": (100, w, []), "b": (200, [(100, 119)], [100])}
    assert corpus_scores({"a": (100, w, [50]), "b": (200, [(100, 119)], [100])})["standard"] == 100.0
    assert corpus_scores({"a": (100, w, []), "b": (200, [(100, 119)], [])})["standard"] == 0.0
    half = corpus_scores(files)["standard"]
    assert abs(half - 50.0) < 1e-9, half
    # A false positive before any window costs A_FP; one during probation nothing.
    assert abs(nab_score(100, w, [10, 20, 50], std) - (0.986614 - 0.11)) < 1e-6
    # Two alerts opening on one row are one detection (NAB flags rows).
    assert abs(nab_score(100, w, [20, 20, 50], std) - (0.986614 - 0.11)) < 1e-6
    # Right after the window: distance 1/9 → 2/(1+e^(5/9)) − 1 = −0.270847, × 0.11.
    assert abs(nab_score(100, w, [50, 60], std) - (0.986614 - 0.11 * 0.270847)) < 1e-6
    assert nab_score(100, w, [], PROFILES["reward_low_FN_rate"]) == -2.0
    print("nab scorer: hand-computed cases pass")


def ms(text):
    return int(datetime.strptime(text[:19], "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc).timestamp() * 1000)


def normalised(raw, null, perfect):
    return 100.0 * (raw - null) / (perfect - null)


def corpus_scores(per_file):
    """per_file: {file: (n_rows, windows, detections)} → normalised score per profile."""
    out = {}
    for name, profile in PROFILES.items():
        raw = sum(nab_score(n, w, d, profile) for n, w, d in per_file.values())
        null = sum(nab_score(n, w, [], profile) for n, w, _ in per_file.values())
        perfect = sum(nab_score(n, w, [s for s, _ in w], profile) for n, w, _ in per_file.values())
        out[name] = round(normalised(raw, null, perfect), 2)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("nab", nargs="?", help="the NAB folder (data/, labels/)")
    ap.add_argument("-c", "--config", default="")
    ap.add_argument("--detectors", default="")
    ap.add_argument("--files", default="", help="only the series whose path holds one of these, comma-separated")
    ap.add_argument("--binary", default=str(root / "target/release/wattchdog"))
    ap.add_argument("--self-test", action="store_true")
    ap.add_argument("--calibrate", default="", help="a false-alarm budget (e.g. 1/week): calibrate each series on its probationary rows")
    ap.add_argument("--block", default="10m", help="with --calibrate: the block of `wattchdog calibrate`")
    a = ap.parse_args()
    if a.self_test:
        self_test()
        return
    nab = Path(a.nab)
    windows_by_file = json.load(open(nab / "labels/combined_windows.json"))
    wanted = [w for w in a.files.split(",") if w]
    names = sorted(f for f in windows_by_file if not wanted or any(w in f for w in wanted))
    keep = set(filter(None, a.detectors.split(",")))
    out = {}
    scored = {}
    for f in names:
        path = nab / "data" / f
        with open(path, newline="") as fh:
            times = [ms(r["timestamp"]) for r in csv.DictReader(fh)]
        windows = []
        for s, e in windows_by_file[f]:
            s, e = ms(s), ms(e)
            rows = [i for i, t in enumerate(times) if s <= t <= e]
            windows.append((rows[0], rows[-1]))
        config = a.config
        work = tempfile.TemporaryDirectory()
        if a.calibrate:
            with open(path, newline="") as fh:
                lines = fh.readlines()
            probation = Path(work.name) / path.name
            probation.write_text("".join(lines[: 1 + min(math.floor(0.15 * len(times)), 750)]))
            cmd = [a.binary, "calibrate", str(probation), "-o", work.name, "--false-alarms", a.calibrate,
                   "--block", a.block]
            if a.config:
                cmd += ["-c", a.config]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode == 0:
                config = str(Path(work.name) / "wattchdog.toml")
            else:
                print(f, "not calibrated:", done.stderr.strip().splitlines()[-1:])
        cmd = [a.binary, "replay", "--json", "--no-progress", str(path)]
        if config:
            cmd += ["-c", config]
        report = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
        # An alert that opens between rows (silence is judged on ticks) is a detection at
        # the next row.
        opened = sorted(bisect.bisect_left(times, ms(x["ts"].replace("T", " "))) for x in report["alerts"]
                        if not keep or x["detector"] in keep)
        opened = [i for i in opened if i < len(times)]
        scored[f] = (len(times), windows, opened)
        out[f] = {p: round(nab_score(len(times), windows, opened, v), 3) for p, v in PROFILES.items()}
        out[f]["detections"] = len(opened)
        out[f]["readings"] = report["readings"]
        print(f, json.dumps(out[f]))
    out["corpus"] = corpus_scores(scored)
    out["corpus"]["files"] = len(scored)
    upstream = json.load(open(nab / "final_results.upstream.json"))
    board = sorted(((v["standard"], k) for k, v in upstream.items()), reverse=True)
    if len(scored) == len(windows_by_file):
        print("standard profile, whole corpus (normalised):")
        mine = out["corpus"]["standard"]
        for score, name in board:
            print(f"  {score:7.2f}  {name}")
        print(f"  {mine:7.2f}  wattchdog (this run)")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
