#!/usr/bin/env python3
"""Reference results from scikit-learn's IsolationForest for wattchdog's own.

    iforest_reference.py OUTDIR

Writes OUTDIR/<name>.csv (features..., label with 1 = outlier) for a few generated
data sets, and OUTDIR/reference.json with scikit-learn's ROC AUC on each (mean over
three random states, 100 trees, max_samples=256).
"""
import json
import os
import sys

import numpy as np
from sklearn.ensemble import IsolationForest
from sklearn.metrics import roc_auc_score


def datasets():
    rng = np.random.default_rng(42)
    # 1. A Gaussian blob with uniform outliers around it.
    x = rng.normal(size=(2000, 4))
    o = rng.uniform(-8, 8, size=(40, 4))
    yield "blob", np.vstack([x, o]), np.r_[np.zeros(2000), np.ones(40)]
    # 2. Two clusters in 8 dimensions, outliers scattered widely.
    a = rng.normal(loc=-3, size=(1000, 8))
    b = rng.normal(loc=3, scale=0.5, size=(1000, 8))
    o = rng.uniform(-10, 10, size=(30, 8))
    yield "clusters", np.vstack([a, b, o]), np.r_[np.zeros(2000), np.ones(30)]
    # 3. Correlated features (a chiller's power follows its load); outliers are plausible
    # one by one but not together.
    load = rng.uniform(0, 1, size=3000)
    x = np.c_[load, 2 * load + rng.normal(scale=0.05, size=3000), rng.normal(size=3000)]
    lo = rng.uniform(0, 1, size=60)
    o = np.c_[lo, 2 * (1 - lo) + rng.normal(scale=0.05, size=60), rng.normal(size=60)]
    yield "correlated", np.vstack([x, o]), np.r_[np.zeros(3000), np.ones(60)]


def main():
    out = sys.argv[1]
    ref = {}
    for name, x, y in datasets():
        np.savetxt(os.path.join(out, f"{name}.csv"), np.c_[x, y], delimiter=",", fmt="%.17g")
        aucs = []
        for seed in range(3):
            m = IsolationForest(n_estimators=100, max_samples=256, random_state=seed).fit(x)
            aucs.append(roc_auc_score(y, -m.score_samples(x)))
        ref[name] = float(np.mean(aucs))
    with open(os.path.join(out, "reference.json"), "w") as f:
        json.dump(ref, f)


if __name__ == "__main__":
    main()
