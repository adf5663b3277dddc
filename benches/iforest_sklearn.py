#!/usr/bin/env python3
"""scikit-learn's IsolationForest on the same shapes as benches/iforest.rs (one thread):
fit time, batch scoring rows/s, single-row scoring latency p50/p99.

    taskset -c 1 python3 benches/iforest_sklearn.py
"""
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
import numpy as np
from sklearn.ensemble import IsolationForest

rng = np.random.default_rng(1)
train = rng.normal(size=(10_000, 16))
test = rng.normal(size=(100_000, 16))
t = time.perf_counter()
m = IsolationForest(n_estimators=100, max_samples=256, random_state=3, n_jobs=1).fit(train)
fit = time.perf_counter() - t
t = time.perf_counter()
m.score_samples(test)
batch = time.perf_counter() - t
lat = []
for i in range(300):
    t = time.perf_counter()
    m.score_samples(test[i:i + 1])
    lat.append(time.perf_counter() - t)
lat.sort()
print(f"scikit-learn fit {fit * 1000:.0f} ms; batch {test.shape[0] / batch:,.0f} rows/s; "
      f"one row p50 {lat[150] * 1e6:.0f} µs, p99 {lat[296] * 1e6:.0f} µs")
