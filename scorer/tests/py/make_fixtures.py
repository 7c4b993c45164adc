#!/usr/bin/env python3
"""Fits scikit-learn one-class SVMs and isolation forests and writes them with expected decisions
for fleetscore's parity test (scorer/tests/parity.rs).

usage: make_fixtures.py OUTDIR

For each case: the model pickled with protocols 2-5, joblib.dump (plain, zlib and gzip), and (via old_pickle.py) the
scikit-learn 0.19 layout with protocols 2 and 3; rows `<case>.rows.f64` (little-endian f64,
row-major), sklearn's `decision_function` in `<case>.dec.f64` and `predict` in `<case>.pred.i8`
(1 = anomaly). OUTDIR/manifest.json lists everything, plus error cases that must be rejected.

Models as they are in the wild (wild_cases): fitted on a pandas DataFrame (feature_names_in_ is an
object array), OneClassSVM fitted on scipy CSR input (also rewritten to scipy < 1.8's
`scipy.sparse.csr` module path), pyod's OCSVM and IForest wrappers (made with pyod itself),
a bare OneClassSVM with its StandardScaler in a separate file, and IsolationForest bare, in a
Pipeline, with feature subsampling, with a contamination offset, and in the pre-1.3 layout
without the stored per-leaf path lengths.
"""
import json
import os
import pickle
import sys
import warnings

import joblib
import numpy as np
import sklearn
import pandas as pd
import scipy.sparse as sparse
from sklearn.ensemble import IsolationForest
from sklearn.metrics.pairwise import pairwise_kernels
from sklearn.neighbors import LocalOutlierFactor
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


def write_layouts(out, name, model, old_n_train=None):
    """Pickles `model` in every layout; returns the manifest's file entries."""
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
    if old_n_train is not None:
        for proto in (2, 3):
            f = f"{name}.old019.p{proto}.pkl"
            with open(os.path.join(out, f), "wb") as fh:
                fh.write(old_pickle.old_layout(model, old_n_train, proto))
            files.append({"file": f, "source": f"sklearn-pickle protocol {proto}", "sklearn_version": "0.19.2"})
    return files


def wild_scale(model, rows):
    """term_scale for any wild case: densified CSR SVMs too; a forest's decision is no sum, 0."""
    svm = model.steps[-1][1] if hasattr(model, "steps") else model
    if not isinstance(svm, OneClassSVM):
        return np.zeros(len(rows))
    x = model[:-1].transform(rows) if hasattr(model, "steps") else rows
    dense = lambda a: a.toarray() if sparse.issparse(a) else a  # noqa: E731
    k = pairwise_kernels(dense(x), dense(svm.support_vectors_), metric=svm.kernel, gamma=svm._gamma,
                         degree=svm.degree, coef0=svm.coef0, filter_params=True)
    return np.abs(k) @ np.abs(dense(svm.dual_coef_)[0]) + abs(float(svm._intercept_[0]))


def write_expected(out, name, rows, dec, pred_anomaly, model):
    write_f64(os.path.join(out, name + ".scale.f64"), wild_scale(model, rows))
    write_f64(os.path.join(out, name + ".rows.f64"), rows)
    write_f64(os.path.join(out, name + ".dec.f64"), dec)
    np.asarray(pred_anomaly, dtype=np.int8).tofile(os.path.join(out, name + ".pred.i8"))


def wild_cases(out, manifest):
    """Models as they are found in public repositories (see the module docstring)."""
    from pyod.models.iforest import IForest
    from pyod.models.ocsvm import OCSVM

    def case(name, model, rows, x_for_predict=None, files=None, scale=None, names=None, estimator="OneClassSVM"):
        xp = rows if x_for_predict is None else x_for_predict
        dec = np.asarray(model.decision_function(xp), dtype=np.float64)
        pred = model.predict(xp) == -1
        write_expected(out, name, rows, dec, pred, model)
        if files is None:
            files = write_layouts(out, name, model)
        entry = {"name": name, "d": rows.shape[1], "rows": len(rows), "n_sv": 0, "intercept": scale, "files": files,
                 "estimator": estimator}
        if names is not None:
            entry["feature_names"] = list(names)
        manifest["cases"].append(entry)

    # 1. Fitted on a DataFrame: feature_names_in_ is an object array (nested pickle in joblib).
    rng = np.random.default_rng(11)
    cols = ["Temperature", "Pressure", "Vibration_RMS"]
    x = sensor_like(rng, 500, 3)
    df = pd.DataFrame(x, columns=cols)
    model = Pipeline([("scaler", StandardScaler()), ("svm", OneClassSVM(nu=0.1))]).fit(df)
    rows = probe_rows(rng, x, 1500)
    case("df_pipeline_svm", model, rows, pd.DataFrame(rows, columns=cols), scale=float(model[-1]._intercept_[0]), names=cols)
    bare = OneClassSVM(nu=0.1, gamma="scale").fit(df)
    case("df_bare_svm", bare, rows, pd.DataFrame(rows, columns=cols), scale=float(bare._intercept_[0]), names=cols)

    # 2. OneClassSVM fitted on scipy CSR input (bare and after a with_mean=False scaler).
    rng = np.random.default_rng(12)
    x = sensor_like(rng, 500, 6, centre=0.0, spread=1.0)
    x[rng.random(x.shape) < 0.5] = 0.0  # sparse data
    rows = probe_rows(rng, x, 1500)
    rows[rng.random(rows.shape) < 0.4] = 0.0
    for name, model in (
        ("sparse_bare_svm", OneClassSVM(nu=0.1, gamma=0.3)),
        ("sparse_pipeline_svm", Pipeline([("scaler", StandardScaler(with_mean=False)), ("svm", OneClassSVM(nu=0.1))])),
        ("sparse_linear_svm", OneClassSVM(kernel="linear", nu=0.2)),
    ):
        model.fit(sparse.csr_matrix(x))
        svm = model if isinstance(model, OneClassSVM) else model[-1]
        assert svm._sparse and sparse.issparse(svm.support_vectors_)
        files = write_layouts(out, name, model)
        # scipy < 1.8 pickled CSR matrices as scipy.sparse.csr.csr_matrix.
        with open(os.path.join(out, f"{name}.p3.pkl"), "rb") as fh:
            old = fh.read().replace(b"cscipy.sparse._csr\ncsr_matrix\n", b"cscipy.sparse.csr\ncsr_matrix\n")
        assert b"scipy.sparse.csr\n" in old
        with open(os.path.join(out, f"{name}.oldscipy.p3.pkl"), "wb") as fh:
            fh.write(old)
        files.append({"file": f"{name}.oldscipy.p3.pkl", "source": "sklearn-pickle protocol 3"})
        case(name, model, rows, sparse.csr_matrix(rows), files=files, scale=float(svm._intercept_[0]))

    # 3. pyod wrappers: pyod's decision_function is sklearn's negated; fleetscore scores sklearn's.
    rng = np.random.default_rng(13)
    x = sensor_like(rng, 400, 2)
    rows = probe_rows(rng, x, 1200)
    od = OCSVM(nu=0.1).fit(x)
    assert np.array_equal(od.decision_function(rows), -od.detector_.decision_function(rows))
    case("pyod_ocsvm", od.detector_, rows, files=write_layouts(out, "pyod_ocsvm", od),
         scale=float(od.detector_._intercept_[0]))
    of = IForest(n_estimators=50, random_state=3).fit(x)
    assert np.allclose(of.decision_function(rows), -of.detector_.decision_function(rows), rtol=0, atol=1e-12)
    case("pyod_iforest", of.detector_, rows, files=write_layouts(out, "pyod_iforest", of), scale=1.0,
         estimator="IsolationForest")

    # 4. A bare OneClassSVM with its StandardScaler committed as a separate file.
    rng = np.random.default_rng(14)
    x = sensor_like(rng, 500, 4)
    scaler = StandardScaler().fit(x)
    svm = OneClassSVM(nu=0.05, gamma="scale").fit(scaler.transform(x))
    rows = probe_rows(rng, x, 1500)
    dec = svm.decision_function(scaler.transform(rows))
    write_expected(out, "sidecar_svm", rows, dec, svm.predict(scaler.transform(rows)) == -1,
                   Pipeline([("scaler", scaler), ("svm", svm)]))
    joblib.dump(svm, os.path.join(out, "sidecar_svm.joblib"))
    joblib.dump(scaler, os.path.join(out, "sidecar_svm.scaler.joblib"))
    with open(os.path.join(out, "sidecar_svm.pkl"), "wb") as fh:
        pickle.dump(svm, fh, protocol=4)
    with open(os.path.join(out, "sidecar_svm.scaler.pkl"), "wb") as fh:
        pickle.dump(scaler, fh, protocol=4)
    manifest["sidecars"] = [
        {"name": "sidecar_svm", "d": 4, "model": "sidecar_svm.joblib", "scaler": "sidecar_svm.scaler.joblib",
         "intercept": float(svm._intercept_[0])},
        {"name": "sidecar_svm", "d": 4, "model": "sidecar_svm.pkl", "scaler": "sidecar_svm.scaler.pkl",
         "intercept": float(svm._intercept_[0])},
    ]

    # 4b. The same layout in a models prefix, for `score`: model_7_3.joblib + model_7_3.scaler.joblib
    # (one feature: the raw values), with readings in fleet_data.csv.
    rng = np.random.default_rng(15)
    x = sensor_like(rng, 400, 1)
    scaler = StandardScaler().fit(x)
    svm = OneClassSVM(nu=0.05, gamma="scale").fit(scaler.transform(x))
    vals = probe_rows(rng, x, 300)[:, 0]
    os.makedirs(os.path.join(out, "fleet_models"), exist_ok=True)
    joblib.dump(svm, os.path.join(out, "fleet_models", "model_7_3.joblib"))
    joblib.dump(scaler, os.path.join(out, "fleet_models", "model_7_3.scaler.joblib"))
    with open(os.path.join(out, "fleet_data.csv"), "w") as fh:
        fh.write("TS,Device,Tag,Value\n")
        for i, v in enumerate(vals):
            fh.write(f"2018-08-28 {i // 3600:02d}:{i // 60 % 60:02d}:{i % 60:02d}.000,7,3,{float(v)!r}\n")
    write_f64(os.path.join(out, "fleet_sidecar.dec.f64"), svm.decision_function(scaler.transform(vals[:, None])))

    # 4c. A device-level model: three tags of device 5 per row, fitted on a DataFrame named by tag,
    # for `score --device-features Temp,Pressure,Flow`; device_bad.csv lacks one Flow reading.
    rng = np.random.default_rng(16)
    tags = ["Temp", "Pressure", "Flow"]
    x = sensor_like(rng, 400, 3)
    model = Pipeline([("scaler", StandardScaler()), ("svm", OneClassSVM(nu=0.05))]).fit(pd.DataFrame(x, columns=tags))
    rows = probe_rows(rng, x, 240)
    os.makedirs(os.path.join(out, "device_models"), exist_ok=True)
    joblib.dump(model, os.path.join(out, "device_models", "model_5_all.joblib"))
    lines = []
    for i, row in enumerate(rows):
        ts = f"2018-08-28 {i // 3600:02d}:{i // 60 % 60:02d}:{i % 60:02d}.000"
        # Tags interleaved in another order than the model's, as a historian exports them.
        for j in (2, 0, 1):
            lines.append(f"{ts},5,{tags[j]},{float(row[j])!r}\n")
    with open(os.path.join(out, "device_data.csv"), "w") as fh:
        fh.write("TS,Device,Tag,Value\n" + "".join(lines))
    with open(os.path.join(out, "device_bad.csv"), "w") as fh:
        fh.write("TS,Device,Tag,Value\n" + "".join(lines[:30] + lines[31:]))
    write_f64(os.path.join(out, "device.dec.f64"), model.decision_function(pd.DataFrame(rows, columns=tags)))

    # 5. IsolationForest.
    for i, (name, d, kw, in_pipeline, use_df) in enumerate((
        ("iforest_1d", 1, dict(), False, False),
        ("iforest_8d", 8, dict(n_estimators=100), False, False),
        ("iforest_8d_pipeline", 8, dict(), True, False),
        ("iforest_5d_max_features", 5, dict(max_features=0.6, bootstrap=True), False, False),
        # 601 rows: contamination 5% puts offset_ exactly on a training score (ties at 0).
        ("iforest_3d_contamination", 3, dict(contamination=0.05), False, False),
        ("iforest_4d_df_pipeline", 4, dict(max_samples=100), True, True),
        ("iforest_2d_pre13_layout", 2, dict(n_estimators=30), False, False),
    )):
        rng = np.random.default_rng(20 + i)
        x = sensor_like(rng, 601, d)
        rows = np.vstack([probe_rows(rng, x, 2000), x])
        est = IsolationForest(random_state=i, **kw)
        model = Pipeline([("scaler", StandardScaler()), ("forest", est)]) if in_pipeline else est
        names = [f"tag_{j}" for j in range(d)] if use_df else None
        model.fit(pd.DataFrame(x, columns=names) if use_df else x)
        xp = pd.DataFrame(rows, columns=names) if use_df else rows
        files = None
        if name.endswith("pre13_layout"):
            # sklearn < 1.3 did not store the per-leaf path lengths: fleetscore computes them.
            dec_before = model.decision_function(xp)
            del est._decision_path_lengths, est._average_path_length_per_tree
            files = write_layouts(out, name, model)
            est._average_path_length_per_tree, est._decision_path_lengths = zip(*[
                (_apl(t.tree_.n_node_samples), t.tree_.compute_node_depths()) for t in est.estimators_])
            assert np.array_equal(dec_before, model.decision_function(xp))
        case(name, model, rows, xp, files=files, scale=1.0, names=names, estimator="IsolationForest")
        if name == "iforest_3d_contamination":
            assert (model.decision_function(xp) == 0).any(), "expected an exact tie at 0"


class CustomDetector:
    """A project's own class: refused naming it."""

    def __init__(self):
        self.threshold = 0.5


def csc_svm(x):
    """A CSR-fitted OneClassSVM whose support vectors were turned into CSC: refused naming it."""
    svm = OneClassSVM(nu=0.1).fit(sparse.csr_matrix(x))
    svm.support_vectors_ = svm.support_vectors_.tocsc()
    return svm


def pyod_knn(x):
    from pyod.models.knn import KNN
    return KNN(n_neighbors=3).fit(x)


def _apl(n):
    from sklearn.ensemble._iforest import _average_path_length
    return _average_path_length(n)


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
        ("lof.pkl", LocalOutlierFactor(novelty=True).fit(x), "LocalOutlierFactor"),
        ("scaler_alone.pkl", StandardScaler().fit(x), "sidecar"),
        ("minmax_iforest_pipeline.pkl", Pipeline([("mm", MinMaxScaler()), ("f", IsolationForest(n_estimators=2))]).fit(x),
         "MinMaxScaler"),
        ("dict.pkl", {"model": "not one"}, "dict"),
        ("minmax_pipeline.pkl", Pipeline([("mm", MinMaxScaler()), ("svm", OneClassSVM())]).fit(x), "MinMaxScaler"),
        ("precomputed.pkl", OneClassSVM(kernel="precomputed").fit(x @ x.T), "precomputed"),
        ("lof_pipeline.pkl", Pipeline([("s", StandardScaler()), ("lof", LocalOutlierFactor(novelty=True))]).fit(x),
         "LocalOutlierFactor"),
        ("custom_class.pkl", CustomDetector(), "__main__.CustomDetector"),
        ("csc_svm.pkl", csc_svm(x), "only CSR"),
        ("pyod_knn.pkl", pyod_knn(x), "pyod.models.knn.KNN"),
    ]
    for f, obj, needle in errors:
        with open(os.path.join(out, f), "wb") as fh:
            pickle.dump(obj, fh, protocol=4)
        manifest["errors"].append({"file": f, "needle": needle})

    wild_cases(out, manifest)

    with open(os.path.join(out, "manifest.json"), "w") as fh:
        json.dump(manifest, fh, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
