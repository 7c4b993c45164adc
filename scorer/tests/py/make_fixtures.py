#!/usr/bin/env python3
"""Fits scikit-learn one-class SVMs and writes them with expected decisions for fleetscore's
parity test (scorer/tests/parity.rs).

usage: make_fixtures.py OUTDIR

For each case: the model pickled with protocols 2-5, joblib.dump (plain, zlib and gzip), and (via old_pickle.py) the
scikit-learn 0.19 layout with protocols 2 and 3; rows `<case>.rows.f64` (little-endian f64,
row-major), sklearn's `decision_function` in `<case>.dec.f64` and `predict` in `<case>.pred.i8`
(1 = anomaly). OUTDIR/manifest.json lists everything, plus error cases that must be rejected.
"""
import json
import os
import pickle
import sys
import warnings

import joblib
import numpy as np
import sklearn
from sklearn.ensemble import IsolationForest
from sklearn.metrics.pairwise import pairwise_kernels
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import MinMaxScaler, StandardScaler
from sklearn.svm import OneClassSVM

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import old_pickle  # noqa: E402


def sensor_like(rng, n, d, centre=80.0, spread=5.0):
    """Readings like the reference's (e.g. 84.53): correlated features plus a few outliers."""
    base = rng.normal(0.0, 1.0, size=(n, 1))
    x = centre + spread * (0.7 * base + 0.3 * rng.normal(0.0, 1.0, size=(n, d)))
    k = max(1, n // 50)
    x[rng.choice(n, k, replace=False)] += rng.normal(0.0, 8 * spread, size=(k, d))
    return x


def probe_rows(rng, train, n):
    """Rows to score: like the training data, slightly wider, and some far away."""
    lo, hi = train.min(axis=0), train.max(axis=0)
    span = np.maximum(hi - lo, 1e-9)
    inside = train[rng.integers(0, len(train), n // 2)] + rng.normal(0, 0.05, size=(n // 2, train.shape[1])) * span
    wide = rng.uniform(lo - 0.5 * span, hi + 0.5 * span, size=(n - n // 2 - 4, train.shape[1]))
    far = np.vstack([lo - 10 * span, hi + 10 * span, (lo + hi) / 2, train[0]])
    return np.vstack([inside, wide, far])


CASES = [
    # name, d, kernel params, scaler (None = bare OneClassSVM), centre, spread
    ("rbf_1d_scale", 1, dict(kernel="rbf", nu=0.05, gamma="scale"), dict(), 80.0, 5.0),
    ("rbf_1d_auto_nu30", 1, dict(kernel="rbf", nu=0.3, gamma="auto"), dict(), 80.0, 5.0),
    ("rbf_1d_gamma2", 1, dict(kernel="rbf", nu=0.1, gamma=2.0), dict(), 20.0, 1.0),
    ("rbf_1d_offset_1e5", 1, dict(kernel="rbf", nu=0.05, gamma="scale"), dict(), 1e5, 1.0),
    ("rbf_3d_scale", 3, dict(kernel="rbf", nu=0.1, gamma="scale"), dict(), 50.0, 10.0),
    ("rbf_8d_scale", 8, dict(kernel="rbf", nu=0.05, gamma="scale"), dict(), 80.0, 5.0),
    ("rbf_8d_gamma05_nu50", 8, dict(kernel="rbf", nu=0.5, gamma=0.05), dict(), 80.0, 5.0),
    ("rbf_2d_bare", 2, dict(kernel="rbf", nu=0.1, gamma=0.5), None, 0.0, 1.0),
    ("rbf_2d_no_mean", 2, dict(kernel="rbf", nu=0.1, gamma="scale"), dict(with_mean=False), 30.0, 3.0),
    ("rbf_2d_no_std", 2, dict(kernel="rbf", nu=0.1, gamma="scale"), dict(with_std=False), 30.0, 3.0),
    ("linear_1d", 1, dict(kernel="linear", nu=0.1), dict(), 80.0, 5.0),
    ("linear_4d", 4, dict(kernel="linear", nu=0.2), dict(), 80.0, 5.0),
    ("poly_1d", 1, dict(kernel="poly", nu=0.1, degree=3, gamma=0.5, coef0=1.0), dict(), 80.0, 5.0),
    ("poly_3d_deg2", 3, dict(kernel="poly", nu=0.2, degree=2, gamma="scale", coef0=0.5), dict(), 80.0, 5.0),
    ("sigmoid_1d", 1, dict(kernel="sigmoid", nu=0.1, gamma=0.1, coef0=0.0), dict(), 80.0, 5.0),
    ("sigmoid_2d", 2, dict(kernel="sigmoid", nu=0.3, gamma=0.05, coef0=-0.5), dict(), 80.0, 5.0),
    # Many support vectors: joblib writes each array after its wrapper, big ones too.
    ("rbf_8d_many_sv", 8, dict(kernel="rbf", nu=0.5, gamma="scale"), dict(), 80.0, 5.0),
]


def term_scale(model, rows):
    """Per row, the sum of |dual_coef_i * K(sv_i, x)| + |intercept|: the size of the terms whose
    sum is the decision. A linear or poly decision near 0 is a sum that cancels, and sklearn's own
    value then moves by ~1e-16 of this scale with the BLAS kernel libsvm's dot products use
    (OpenBLAS picks one per CPU), so the tolerance must scale with it, not with the result."""
    svm = model.steps[-1][1] if hasattr(model, "steps") else model
    x = model[:-1].transform(rows) if hasattr(model, "steps") else rows
    k = pairwise_kernels(x, svm.support_vectors_, metric=svm.kernel, gamma=svm._gamma,
                         degree=svm.degree, coef0=svm.coef0, filter_params=True)
    return np.abs(k) @ np.abs(svm.dual_coef_[0]) + abs(float(svm._intercept_[0]))


def write_f64(path, a):
    np.ascontiguousarray(a, dtype="<f8").tofile(path)


def main(out):
    os.makedirs(out, exist_ok=True)
    warnings.simplefilter("ignore")
    manifest = {"sklearn_version": sklearn.__version__, "numpy_version": np.__version__, "cases": [], "errors": []}
    for i, (name, d, params, scaler, centre, spread) in enumerate(CASES):
        rng = np.random.default_rng(1000 + i)
        n_train = 2500 if name.endswith("many_sv") else 600
        x = sensor_like(rng, n_train, d, centre, spread)
        svm = OneClassSVM(**params)
        model = svm if scaler is None else Pipeline([("scaler", StandardScaler(**scaler)), ("svm", svm)])
        model.fit(x)
        rows = probe_rows(rng, x, 3000)
        dec = model.decision_function(rows)
        pred = (model.predict(rows) == -1).astype(np.int8)
        write_f64(os.path.join(out, name + ".rows.f64"), rows)
        write_f64(os.path.join(out, name + ".dec.f64"), dec)
        pred.tofile(os.path.join(out, name + ".pred.i8"))
        write_f64(os.path.join(out, name + ".scale.f64"), term_scale(model, rows))
        files = []
        for proto in (2, 3, 4, 5):
            f = f"{name}.p{proto}.pkl"
            with open(os.path.join(out, f), "wb") as fh:
                pickle.dump(model, fh, protocol=proto)
            files.append({"file": f, "source": f"sklearn-pickle protocol {proto}"})
        f = name + ".joblib"
        joblib.dump(model, os.path.join(out, f))
        files.append({"file": f, "source": "joblib"})
        # joblib.dump(compress=3) is zlib; ("gzip", 3) is gzip.
        for kind, compress in (("zlib", 3), ("gzip", ("gzip", 3))):
            f = f"{name}.{kind}.joblib"
            joblib.dump(model, os.path.join(out, f), compress=compress)
            files.append({"file": f, "source": f"joblib {kind}"})
        for proto in (2, 3):
            f = f"{name}.old019.p{proto}.pkl"
            with open(os.path.join(out, f), "wb") as fh:
                fh.write(old_pickle.old_layout(model, n_train, proto))
            files.append({"file": f, "source": f"sklearn-pickle protocol {proto}", "sklearn_version": "0.19.2"})
        last = model if scaler is None else model.steps[-1][1]
        manifest["cases"].append({
            "name": name, "d": d, "rows": len(rows), "n_sv": int(last.support_vectors_.shape[0]),
            "intercept": float(last._intercept_[0]), "files": files,
        })

    # A Fortran-ordered support vector array (numpy's is_fortran / order='F' paths).
    rng = np.random.default_rng(7)
    x = sensor_like(rng, 400, 3)
    model = Pipeline([("scaler", StandardScaler()), ("svm", OneClassSVM(nu=0.1))]).fit(x)
    svm = model.steps[-1][1]
    rows = probe_rows(rng, x, 1000)
    write_f64(os.path.join(out, "fortran.rows.f64"), rows)
    write_f64(os.path.join(out, "fortran.dec.f64"), model.decision_function(rows))
    (model.predict(rows) == -1).astype(np.int8).tofile(os.path.join(out, "fortran.pred.i8"))
    write_f64(os.path.join(out, "fortran.scale.f64"), term_scale(model, rows))
    # Same numbers, Fortran layout (sklearn itself needs C order to score, so only for pickling).
    svm.support_vectors_ = np.asfortranarray(svm.support_vectors_)
    files = []
    for proto in (3, 4, 5):
        f = f"fortran.p{proto}.pkl"
        with open(os.path.join(out, f), "wb") as fh:
            pickle.dump(model, fh, protocol=proto)
        files.append({"file": f, "source": f"sklearn-pickle protocol {proto}"})
    joblib.dump(model, os.path.join(out, "fortran.joblib"))
    files.append({"file": "fortran.joblib", "source": "joblib"})
    manifest["cases"].append({"name": "fortran", "d": 3, "rows": len(rows), "n_sv": int(svm.support_vectors_.shape[0]),
                              "intercept": float(svm._intercept_[0]), "files": files})

    # Things that are not supported models: the error must name what was found.
    errors = [
        ("iforest.pkl", IsolationForest(n_estimators=3, random_state=0).fit(x), "IsolationForest"),
        ("dict.pkl", {"model": "not one"}, "dict"),
        ("minmax_pipeline.pkl", Pipeline([("mm", MinMaxScaler()), ("svm", OneClassSVM())]).fit(x), "MinMaxScaler"),
        ("precomputed.pkl", OneClassSVM(kernel="precomputed").fit(x @ x.T), "precomputed"),
    ]
    for f, obj, needle in errors:
        with open(os.path.join(out, f), "wb") as fh:
            pickle.dump(obj, fh, protocol=4)
        manifest["errors"].append({"file": f, "needle": needle})

    with open(os.path.join(out, "manifest.json"), "w") as fh:
        json.dump(manifest, fh, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
