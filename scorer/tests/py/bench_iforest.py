#!/usr/bin/env python3
"""scikit-learn side of `bench-iforest`: fits IsolationForests (bare and after a StandardScaler)
for d = 1, 8 and 24, times `decision_function` on the rows fleetscore will score, and writes the
models as pickles, rows and decisions as little-endian f64 and timings to OUTDIR/bench.json.

usage: bench_iforest.py OUTDIR [--rows N]   (N rows scored per case; default 20000)
"""
import json
import os
import pickle
import sys
import time

import numpy as np
from sklearn.ensemble import IsolationForest
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler


def main(out, n_rows):
    os.makedirs(out, exist_ok=True)
    cases = []
    rng = np.random.default_rng(7)
    for d, n_estimators, piped in ((1, 100, False), (8, 100, True), (24, 200, True)):
        x = 80 + 5 * (0.7 * rng.normal(size=(4000, 1)) + 0.3 * rng.normal(size=(4000, d)))
        est = IsolationForest(n_estimators=n_estimators, random_state=0)
        model = Pipeline([("scaler", StandardScaler()), ("forest", est)]) if piped else est
        model.fit(x)
        rows = 80 + 6 * rng.normal(size=(n_rows, d))
        best = float("inf")
        for _ in range(3):
            t = time.perf_counter()
            dec = model.decision_function(rows)
            best = min(best, time.perf_counter() - t)
        name = f"d{d}_t{n_estimators}" + ("_pipeline" if piped else "")
        with open(os.path.join(out, name + ".pkl"), "wb") as fh:
            pickle.dump(model, fh, protocol=4)
        np.ascontiguousarray(rows, dtype="<f8").tofile(os.path.join(out, name + ".rows.f64"))
        np.ascontiguousarray(dec, dtype="<f8").tofile(os.path.join(out, name + ".dec.f64"))
        cases.append({"name": name, "d": d, "trees": n_estimators, "rows": n_rows, "sklearn_seconds": best})
        print(f"sklearn {name}: {n_rows} rows, {n_rows / best:,.0f} rows/s", file=sys.stderr)
    with open(os.path.join(out, "bench.json"), "w") as fh:
        json.dump({"cases": cases}, fh, indent=1)


if __name__ == "__main__":
    rows = int(sys.argv[sys.argv.index("--rows") + 1]) if "--rows" in sys.argv else 20000
    main(sys.argv[1], rows)
