#!/usr/bin/env python3
"""Makes examples/reference-fleet/: a small fleet like the reference architecture's.

3 devices x 5 tags, one day of readings at one-minute resolution (TS,Device,Tag,Value) with a few
injected anomalies, and one scikit-learn Pipeline(StandardScaler, OneClassSVM) pickle per sensor
(models/model_<device>_<tag>.pkl), trained on separate normal readings. Deterministic (fixed seed).

Run with the project's venv:  $HOME/.cache/fleetscore/venv/bin/python examples/make-reference-fleet.py
"""
import os
import pickle
import sys

import numpy as np
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import OneClassSVM

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "reference-fleet")
DEVICES = [1, 2, 3]
TAGS = [1, 2, 3, 4, 5]
MINUTES = 24 * 60
START = np.datetime64("2018-08-28T00:00:00")


def sensor_signal(rng, device, tag, n, offset):
    """A daily cycle around a per-sensor level, with noise."""
    level = 40.0 + 10.0 * tag + 3.0 * device
    t = (np.arange(n) + offset) / MINUTES
    return level + 5.0 * np.sin(2 * np.pi * t) + rng.normal(0.0, 1.0, n)


def main():
    rng = np.random.default_rng(20180828)
    os.makedirs(os.path.join(OUT, "models"), exist_ok=True)
    rows = []
    anomalies = 0
    for device in DEVICES:
        for tag in TAGS:
            # Model: trained on a week-earlier day of normal readings (subsampled: few support vectors).
            train = sensor_signal(rng, device, tag, MINUTES, 0)[::3].reshape(-1, 1)
            model = Pipeline([("scaler", StandardScaler()), ("svm", OneClassSVM(nu=0.005, gamma=0.2))])
            model.fit(train)
            with open(os.path.join(OUT, "models", f"model_{device}_{tag}.pkl"), "wb") as f:
                pickle.dump(model, f)
            # Readings to score: the same pattern plus a few spikes and drops.
            values = sensor_signal(rng, device, tag, MINUTES, 0)
            spikes = rng.choice(MINUTES, size=4, replace=False)
            values[spikes] += rng.choice([-1.0, 1.0], size=4) * rng.uniform(20.0, 40.0, size=4)
            anomalies += 4
            for i, v in enumerate(values):
                rows.append((i, device, tag, v))
    # Interleave sensors by time, like a real telemetry export.
    rows.sort(key=lambda r: (r[0], r[1], r[2]))
    with open(os.path.join(OUT, "readings.csv"), "w") as f:
        f.write("TS,Device,Tag,Value\n")
        for i, device, tag, v in rows:
            ts = START + np.timedelta64(i, "m")
            stamp = str(ts).replace("T", " ") + ".000"
            f.write(f"{stamp},{device},{tag},{v:.2f}\n")
    print(f"wrote {len(rows)} readings ({anomalies} injected anomalies) and "
          f"{len(DEVICES) * len(TAGS)} models under {OUT}", file=sys.stderr)


if __name__ == "__main__":
    main()
