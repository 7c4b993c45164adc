#!/usr/bin/env python3
"""scikit-learn side of `bench-kernel`: fits one-class SVM pipelines with about 10, 100 and 1000
support vectors for d = 1 and 8, times `decision_function` on the same rows fleetscore will
score, and writes everything to OUTDIR (models as pickles, rows and decisions as little-endian
f64, timings in OUTDIR/bench.json).

usage: bench_sklearn.py OUTDIR [--scale F]   (F multiplies the row counts; default 1)
"""
import json
import os
import pickle
import sys
import time

import numpy as np
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import OneClassSVM


def main(out, scale):
    os.makedirs(out, exist_ok=True)
    cases = []
    rng = np.random.default_rng(42)
    for d in (1, 8):
        # (training rows, nu) giving about 10, 100 and 1000 support vectors.
        for target_sv, n_train, nu in ((10, 60, 0.1), (100, 800, 0.08), (1000, 2000, 0.5)):
            x = 80 + 5 * (0.7 * rng.normal(size=(n_train, 1)) + 0.3 * rng.normal(size=(n_train, d)))
            model = Pipeline([("scaler", StandardScaler()), ("svm", OneClassSVM(nu=nu, gamma="scale"))])
            model.fit(x)
            n_sv = model.steps[-1][1].support_vectors_.shape[0]
            # About 2e7 kernel evaluations per timing: under a second for sklearn.
            n_rows = int(min(max(2e7 / n_sv, 10_000), 400_000) * scale)
            rows = 80 + 6 * rng.normal(size=(n_rows, d))
            best = float("inf")
            for _ in range(3):
                t = time.perf_counter()
                dec = model.decision_function(rows)
                best = min(best, time.perf_counter() - t)
            name = f"d{d}_sv{target_sv}"
            with open(os.path.join(out, name + ".pkl"), "wb") as fh:
                pickle.dump(model, fh, protocol=4)
            np.ascontiguousarray(rows, dtype="<f8").tofile(os.path.join(out, name + ".rows.f64"))
            np.ascontiguousarray(dec, dtype="<f8").tofile(os.path.join(out, name + ".dec.f64"))
            cases.append({"name": name, "d": d, "n_sv": int(n_sv), "rows": n_rows, "sklearn_seconds": best})
            print(f"sklearn {name}: {n_sv} SVs, {n_rows} rows, {n_rows / best:,.0f} rows/s", file=sys.stderr)
    with open(os.path.join(out, "bench.json"), "w") as fh:
        json.dump({"cases": cases}, fh, indent=1)


if __name__ == "__main__":
    scale = float(sys.argv[sys.argv.index("--scale") + 1]) if "--scale" in sys.argv else 1.0
    main(sys.argv[1], scale)
