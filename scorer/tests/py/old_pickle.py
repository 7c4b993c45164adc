"""Writes scikit-learn 0.19-era pickles (Python 3.6, numpy 1.x) without sklearn 0.19.

sklearn 0.19 does not install on today's Python, so this module emits the opcodes that
`pickle.dump(model, f, protocol=2 or 3)` produced in 2018, at the pickletools level:
2018 module paths (`sklearn.pipeline`, `sklearn.preprocessing.data`, `sklearn.svm.classes`,
`numpy.core.multiarray._reconstruct`), arrays as `_reconstruct(ndarray, (0,), b'b')` + BUILD with
(1, shape, dtype, is_fortran, raw bytes), dtypes as `numpy.dtype(descr, False, True)` + BUILD
(3, order, None, None, None, -1, -1, 0), estimators as NEWOBJ + BUILD of their __dict__ (0.19's
attribute order, `_sklearn_version` last), memo PUT after each object and GET for repeats
(shared globals and dtypes, and `_dual_coef_`, which is the same array as `dual_coef_`).
Protocol 2 writes bytes as `_codecs.encode(str, 'latin1')` and `__builtin__` names, as Python 3's
pickler does for Python 2 compatibility.
"""
import struct

import numpy as np


class Array:
    """An ndarray to write in numpy 1.x layout (by identity, so repeats become GETs)."""

    def __init__(self, a, fortran=False):
        self.a = np.asarray(a)
        self.fortran = fortran


class Est:
    """An estimator: class path and ordered __dict__."""

    def __init__(self, module, name, state):
        self.module, self.name, self.state = module, name, state


class Writer:
    def __init__(self, protocol):
        assert protocol in (2, 3)
        self.proto = protocol
        self.out = bytearray()
        self.n = 0
        self.globals = {}
        self.dtypes = {}
        self.ids = {}

    def put(self):
        if self.n < 256:
            self.out += b"q" + bytes([self.n])
        else:
            self.out += b"r" + struct.pack("<I", self.n)
        self.n += 1
        return self.n - 1

    def get(self, i):
        self.out += (b"h" + bytes([i])) if i < 256 else (b"j" + struct.pack("<I", i))

    def glob(self, module, name):
        if self.proto < 3 and module == "builtins":
            module = "__builtin__"
        key = (module, name)
        if key in self.globals:
            self.get(self.globals[key])
            return
        self.out += b"c" + module.encode() + b"\n" + name.encode() + b"\n"
        self.globals[key] = self.put()

    def save(self, v):
        if v is None:
            self.out += b"N"
        elif v is True:
            self.out += b"\x88"
        elif v is False:
            self.out += b"\x89"
        elif isinstance(v, int):
            if 0 <= v < 256:
                self.out += b"K" + bytes([v])
            elif 0 <= v < 65536:
                self.out += b"M" + struct.pack("<H", v)
            elif -(2**31) <= v < 2**31:
                self.out += b"J" + struct.pack("<i", v)
            else:
                b = v.to_bytes((v.bit_length() + 8) // 8, "little", signed=True)
                self.out += b"\x8a" + bytes([len(b)]) + b
        elif isinstance(v, float):
            self.out += b"G" + struct.pack(">d", v)
        elif isinstance(v, str):
            b = v.encode("utf-8", "surrogatepass")
            self.out += b"X" + struct.pack("<I", len(b)) + b
            self.put()
        elif isinstance(v, bytes):
            self.save_bytes(v)
        elif isinstance(v, tuple):
            self.save_tuple(v)
        elif isinstance(v, list):
            self.out += b"]"
            self.put()
            if len(v) == 1:
                self.save(v[0])
                self.out += b"a"
            elif v:
                self.out += b"("
                for x in v:
                    self.save(x)
                self.out += b"e"
        elif isinstance(v, dict):
            self.out += b"}"
            self.put()
            items = list(v.items())
            if len(items) == 1:
                self.save(items[0][0])
                self.save(items[0][1])
                self.out += b"s"
            elif items:
                self.out += b"("
                for k, x in items:
                    self.save(k)
                    self.save(x)
                self.out += b"u"
        elif isinstance(v, Array):
            self.save_array(v)
        elif isinstance(v, Est):
            self.glob(v.module, v.name)
            self.out += b")\x81"
            self.put()
            self.save(v.state)
            self.out += b"b"
        else:
            raise TypeError(type(v))

    def save_bytes(self, b):
        if self.proto >= 3:
            if len(b) < 256:
                self.out += b"C" + bytes([len(b)]) + b
            else:
                self.out += b"B" + struct.pack("<I", len(b)) + b
            self.put()
        elif not b:
            self.glob("builtins", "bytes")
            self.out += b")R"
            self.put()
        else:
            self.glob("_codecs", "encode")
            self.save(b.decode("latin1"))
            self.save("latin1")
            self.out += b"\x86R"
            self.put()

    def save_tuple(self, t):
        if not t:
            self.out += b")"
            return
        if len(t) <= 3:
            for x in t:
                self.save(x)
            self.out += bytes([0x84 + len(t)])
        else:
            self.out += b"("
            for x in t:
                self.save(x)
            self.out += b"t"
        self.put()

    def save_dtype(self, dt):
        descr = dt.str[1:]  # 'f8', 'i4', 'b1'
        if descr in self.dtypes:
            self.get(self.dtypes[descr])
            return
        self.glob("numpy", "dtype")
        self.save_tuple((descr, False, True))
        self.out += b"R"
        self.dtypes[descr] = self.put()
        order = "|" if dt.itemsize == 1 else "<"
        self.save_tuple((3, order, None, None, None, -1, -1, 0))
        self.out += b"b"

    def save_array(self, arr):
        if id(arr) in self.ids:
            self.get(self.ids[id(arr)])
            return
        a = arr.a
        self.glob("numpy.core.multiarray", "_reconstruct")
        self.glob("numpy", "ndarray")
        self.save_tuple((0,))
        self.save_bytes(b"b")
        self.out += b"\x87R"
        self.ids[id(arr)] = self.put()
        raw = a.tobytes(order="F" if arr.fortran else "C")
        self.out += b"("
        self.save(1)
        self.save_tuple(tuple(int(s) for s in a.shape))
        self.save_dtype(a.dtype)
        self.save(bool(arr.fortran))
        self.save_bytes(raw)
        self.out += b"t"
        self.put()
        self.out += b"b"

    def dump(self, obj):
        self.out += b"\x80" + bytes([self.proto])
        self.save(obj)
        self.out += b"."
        return bytes(self.out)


def ocsvm_state(svm, garbage_n_support=True):
    """OneClassSVM.__dict__ as sklearn 0.19.2 left it after fit, from a fitted modern model."""
    sv = np.ascontiguousarray(svm.support_vectors_, dtype=np.float64)
    dual = Array(np.asarray(svm._dual_coef_, dtype=np.float64).reshape(1, -1))
    gamma_param = svm.gamma if not isinstance(svm.gamma, str) else "auto"
    state = {
        "kernel": svm.kernel,
        "degree": int(svm.degree),
        "gamma": gamma_param,
        "coef0": float(svm.coef0),
        "tol": float(svm.tol),
        "C": 0.0,
        "nu": float(svm.nu),
        "epsilon": 0.0,
        "shrinking": bool(svm.shrinking),
        "probability": False,
        "cache_size": float(svm.cache_size),
        "class_weight": None,
        "verbose": False,
        "max_iter": int(svm.max_iter),
        "random_state": None,
        "_sparse": False,
        "class_weight_": Array(np.empty(0, dtype=np.float64)),
        "_gamma": float(svm._gamma),
        "shape_fit_": tuple(int(s) for s in svm.shape_fit_),
        "support_": Array(np.asarray(svm.support_, dtype=np.int32)),
        "support_vectors_": Array(sv),
        # 0.19 left n_support_ uninitialised for one-class models.
        "n_support_": Array(np.array([-1214970368, 32764] if garbage_n_support else [len(sv), 0], dtype=np.int32)),
        "dual_coef_": dual,
        "intercept_": Array(np.asarray(svm._intercept_, dtype=np.float64)),
        "probA_": Array(np.empty(0, dtype=np.float64)),
        "probB_": Array(np.empty(0, dtype=np.float64)),
        "fit_status_": 0,
        "_intercept_": Array(np.asarray(svm._intercept_, dtype=np.float64).copy()),
        "_dual_coef_": dual,
        "_sklearn_version": "0.19.2",
    }
    return Est("sklearn.svm.classes", "OneClassSVM", state)


def scaler_state(sc, n_samples):
    state = {
        "with_mean": bool(sc.with_mean),
        "with_std": bool(sc.with_std),
        "copy": True,
        "n_samples_seen_": int(n_samples),
        "mean_": Array(sc.mean_) if sc.mean_ is not None else None,
        "var_": Array(sc.var_) if sc.var_ is not None else None,
        "scale_": Array(sc.scale_) if sc.scale_ is not None else None,
        "_sklearn_version": "0.19.2",
    }
    return Est("sklearn.preprocessing.data", "StandardScaler", state)


def old_layout(model, n_samples, protocol):
    """Pickle bytes of `model` (a modern Pipeline(StandardScaler, OneClassSVM) or OneClassSVM) as 0.19 wrote them."""
    if hasattr(model, "steps"):
        steps = []
        for name, est in model.steps:
            if type(est).__name__ == "StandardScaler":
                steps.append((name, scaler_state(est, n_samples)))
            else:
                steps.append((name, ocsvm_state(est)))
        obj = Est("sklearn.pipeline", "Pipeline", {"steps": steps, "memory": None, "_sklearn_version": "0.19.2"})
    else:
        obj = ocsvm_state(model)
    return Writer(protocol).dump(obj)
