"""A NumPy forward pass of the trained Keras LSTM, read straight from its HDF5 file.

Importing TensorFlow alone takes 3-4 s; live trading and backtests need a prediction in well
under a second. This module reads the model's architecture (the ``model_config`` attribute that
Keras writes into the .h5) and its weights (``model_weights/<layer>/.../kernel``,
``recurrent_kernel``, ``bias``) with h5py and evaluates the network with NumPy, all windows of
all symbols in one vectorized pass. It imports only NumPy and h5py (never TensorFlow or Keras).

Supported: a ``Sequential`` model of ``InputLayer``, ``LSTM`` (one or more, stacked with
``return_sequences``), ``Dense`` and ``Dropout`` (identity at inference) layers. Keras stores an
LSTM's gates in the order input, forget, cell, output along the last axis of ``kernel``
(features x 4*units), ``recurrent_kernel`` (units x 4*units) and ``bias`` (4*units):

    z = x_t @ kernel + h_{t-1} @ recurrent_kernel + bias
    i, f, g, o = recurrent_activation(z_i), recurrent_activation(z_f), activation(z_g), recurrent_activation(z_o)
    c_t = f * c_{t-1} + i * g;   h_t = o * activation(c_t)

Computation is in float32 by default, like Keras (float64 on request: ``load_network(path,
np.float64)``); the two agree within about 1e-6 and ``tests/test_lstm_inference.py`` checks 1e-5. Anything else in the file (a Functional model,
``go_backwards``, ``stateful``, an unknown layer or activation) is refused with
``InferenceError`` rather than silently computed wrong.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import glob
import json
import os
from dataclasses import dataclass, field

import h5py
import numpy as np

from errors import UserFacingError


class InferenceError(UserFacingError):
    """The .h5 file cannot be evaluated by the NumPy path (unreadable or unsupported)."""


# ----------------------------------------------------------------------------- BLAS threads
@functools.lru_cache(maxsize=1)
def _openblas():
    """NumPy's bundled OpenBLAS (get/set_num_threads), or None when it cannot be found (looked up
    once per process)."""
    libs = os.path.join(os.path.dirname(os.path.dirname(np.__file__)), "numpy.libs")
    for path in glob.glob(os.path.join(libs, "*openblas*.so*")):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for get, set_ in (("scipy_openblas_get_num_threads64_", "scipy_openblas_set_num_threads64_"),
                          ("openblas_get_num_threads64_", "openblas_set_num_threads64_"),
                          ("openblas_get_num_threads", "openblas_set_num_threads")):
            if hasattr(lib, get) and hasattr(lib, set_):
                return getattr(lib, get), getattr(lib, set_)
    return None


@contextlib.contextmanager
def single_threaded_blas():
    """The recurrent loop does ~20 small matrix products per layer; OpenBLAS hands each to its
    thread pool, and on a busy 2-core machine waiting for those threads costs milliseconds per
    call (measured: 1.6-2.2 s instead of 0.4 s for 16,800 windows). One thread is faster here."""
    blas = _openblas()
    if blas is None:
        yield
        return
    get, set_ = blas
    try:
        before = int(get())
    except Exception:
        yield
        return
    set_(1)
    try:
        yield
    finally:
        set_(before)


# ----------------------------------------------------------------------------- activations
def _sigmoid(x):
    with np.errstate(over="ignore"):               # exp(-x) -> inf gives exactly 0: fine
        return 1.0 / (1.0 + np.exp(-x))


def _hard_sigmoid(x):                              # Keras 3: relu6(x + 3) / 6
    return np.clip((x + 3.0) / 6.0, 0.0, 1.0)


ACTIVATIONS = {
    "linear": lambda x: x,
    None: lambda x: x,
    "tanh": np.tanh,
    "sigmoid": _sigmoid,
    "hard_sigmoid": _hard_sigmoid,
    "relu": lambda x: np.maximum(x, 0.0),
    "softsign": lambda x: x / (1.0 + np.abs(x)),
}


def _activation(spec, layer: str):
    if isinstance(spec, dict):                     # serialized activation object
        spec = spec.get("config", {}).get("name", spec.get("class_name"))
    if spec not in ACTIVATIONS:
        raise InferenceError(f"layer {layer}: activation {spec!r} is not supported by the NumPy path")
    return ACTIVATIONS[spec]


# ----------------------------------------------------------------------------- layers
@dataclass
class LSTMLayer:
    name: str
    kernel: np.ndarray              # (features, 4*units)
    recurrent_kernel: np.ndarray    # (units, 4*units)
    bias: np.ndarray                # (4*units,)
    activation: object
    recurrent_activation: object
    return_sequences: bool

    @property
    def units(self) -> int:
        return self.recurrent_kernel.shape[0]

    def __post_init__(self):
        # Columns reordered once from Keras's (i, f, c, o) to (i, f, o, c): the three sigmoid
        # gates are then one contiguous block (one activation call per step, no copies).
        u = self.units
        order = np.r_[0:2 * u, 3 * u:4 * u, 2 * u:3 * u]
        self._kernel = np.ascontiguousarray(self.kernel[:, order])
        self._rec = np.ascontiguousarray(self.recurrent_kernel[:, order])
        self._bias = np.ascontiguousarray(self.bias[order])

    def astype(self, dtype):
        self._kernel, self._rec, self._bias = (a.astype(dtype) for a in (self._kernel, self._rec, self._bias))
        return self

    def __call__(self, x: np.ndarray) -> np.ndarray:
        n, steps, _ = x.shape
        u = self.units
        act, ract = self.activation, self.recurrent_activation
        kernel, rec, bias = self._kernel, self._rec, self._bias
        h = np.zeros((n, u), dtype=kernel.dtype)
        c = np.zeros((n, u), dtype=kernel.dtype)
        outputs = np.empty((n, steps, u), dtype=kernel.dtype) if self.return_sequences else None
        for t in range(steps):
            z = x[:, t, :] @ kernel
            z += h @ rec
            z += bias
            gates = ract(z[:, :3 * u])               # i, f, o
            g = act(z[:, 3 * u:])
            c = gates[:, u:2 * u] * c + gates[:, :u] * g
            h = gates[:, 2 * u:] * act(c)
            if outputs is not None:
                outputs[:, t, :] = h
        return outputs if outputs is not None else h


@dataclass
class DenseLayer:
    name: str
    kernel: np.ndarray
    bias: np.ndarray
    activation: object

    def astype(self, dtype):
        self.kernel, self.bias = self.kernel.astype(dtype), self.bias.astype(dtype)
        return self

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.activation(x @ self.kernel + self.bias)


@dataclass
class LSTMNetwork:
    """The evaluated network: ``predict(windows)`` with windows shaped (n, steps, features)."""
    layers: list
    input_shape: tuple              # (steps or None, features)
    keras_version: str = ""
    layer_names: list = field(default_factory=list)
    dtype: type = np.float32

    @property
    def window(self):
        return self.input_shape[0]

    @property
    def n_features(self) -> int:
        return self.input_shape[1]

    def describe(self) -> list[dict]:
        out = []
        for layer in self.layers:
            kind = "LSTM" if isinstance(layer, LSTMLayer) else "Dense"
            units = layer.units if kind == "LSTM" else layer.kernel.shape[1]
            out.append({"type": kind, "name": layer.name, "units": int(units)})
        return out

    def predict(self, windows: np.ndarray, chunk: int = 2048) -> np.ndarray:
        x = np.asarray(windows)
        if x.ndim != 3:
            raise InferenceError(f"expected windows shaped (n, steps, features); got {x.shape}")
        if x.shape[2] != self.n_features or (self.window and x.shape[1] != self.window):
            raise InferenceError(f"windows shaped {x.shape[1:]} do not fit the model's input "
                                 f"{self.input_shape}")
        if x.shape[0] == 0:
            return np.zeros((0, self._out_units()), dtype=self.dtype)
        parts = []
        with single_threaded_blas():
            for start in range(0, x.shape[0], chunk):
                y = np.asarray(x[start:start + chunk], dtype=self.dtype)   # chunks stay in cache
                for layer in self.layers:
                    y = layer(y)
                parts.append(y)
        return np.concatenate(parts, axis=0)

    def _out_units(self) -> int:
        last = self.layers[-1]
        return last.units if isinstance(last, LSTMLayer) else last.kernel.shape[1]


# ----------------------------------------------------------------------------- loading
def _collect_weights(group) -> dict:
    found = {}

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset):
            base = name.rsplit("/", 1)[-1].split(":", 1)[0]
            found.setdefault(base, np.asarray(obj[()], dtype=np.float64))

    group.visititems(visit)
    return found


def load_network(path, dtype=np.float32) -> LSTMNetwork:
    """Read a Keras HDF5 model (``model.save('x.h5')``) into an ``LSTMNetwork`` computing in
    ``dtype`` (float32 like Keras, and 3-4x faster than float64 for the activations)."""
    try:
        with h5py.File(path, "r") as fh:
            raw = fh.attrs.get("model_config")
            if raw is None:
                raise InferenceError(f"{path} has no model_config: not a Keras HDF5 model")
            if isinstance(raw, bytes):
                raw = raw.decode("utf-8")
            cfg = json.loads(raw)
            keras_version = fh.attrs.get("keras_version", b"")
            keras_version = keras_version.decode() if isinstance(keras_version, bytes) else str(keras_version)
            if "model_weights" not in fh:
                raise InferenceError(f"{path} has no model_weights group")
            weights_root = fh["model_weights"]
            net = _build(cfg, weights_root, keras_version, path)
        net.dtype = np.dtype(dtype).type
        for layer in net.layers:
            layer.astype(net.dtype)
        return net
    except InferenceError:
        raise
    except (OSError, KeyError, ValueError, json.JSONDecodeError) as exc:
        raise InferenceError(f"{path} cannot be read as a Keras HDF5 model ({type(exc).__name__}: {exc})") from None


def _build(cfg: dict, weights_root, keras_version: str, path) -> LSTMNetwork:
    if cfg.get("class_name") != "Sequential":
        raise InferenceError(f"{path}: only Sequential models are supported (got {cfg.get('class_name')})")
    layer_cfgs = cfg["config"]["layers"]
    input_shape = None
    build_shape = cfg["config"].get("build_input_shape")
    if build_shape:
        input_shape = tuple(build_shape[1:])
    layers, names = [], []
    for lc in layer_cfgs:
        kind, c = lc["class_name"], lc["config"]
        name = c.get("name")
        if kind == "InputLayer":
            shape = c.get("batch_shape") or c.get("batch_input_shape")
            if shape:
                input_shape = tuple(shape[1:])
            continue
        if kind == "Dropout":
            continue
        if name not in weights_root:
            raise InferenceError(f"{path}: weights of layer {name!r} are missing")
        w = _collect_weights(weights_root[name])
        if kind == "LSTM":
            for flag in ("go_backwards", "stateful", "return_state"):
                if c.get(flag):
                    raise InferenceError(f"{path}: LSTM layer {name} uses {flag}, not supported")
            units = int(c["units"])
            kernel, rec = w.get("kernel"), w.get("recurrent_kernel")
            if kernel is None or rec is None:
                raise InferenceError(f"{path}: LSTM layer {name} lacks kernel/recurrent_kernel")
            bias = w.get("bias") if c.get("use_bias", True) else None
            bias = np.zeros(4 * units) if bias is None else bias
            if kernel.shape[1] != 4 * units or rec.shape != (units, 4 * units) or bias.shape != (4 * units,):
                raise InferenceError(f"{path}: LSTM layer {name} has inconsistent weight shapes")
            layers.append(LSTMLayer(name, kernel, rec, bias, _activation(c.get("activation", "tanh"), name),
                                    _activation(c.get("recurrent_activation", "sigmoid"), name),
                                    bool(c.get("return_sequences", False))))
        elif kind == "Dense":
            kernel = w.get("kernel")
            if kernel is None:
                raise InferenceError(f"{path}: Dense layer {name} lacks a kernel")
            bias = w.get("bias") if c.get("use_bias", True) else None
            bias = np.zeros(kernel.shape[1]) if bias is None else bias
            layers.append(DenseLayer(name, kernel, bias, _activation(c.get("activation", "linear"), name)))
        else:
            raise InferenceError(f"{path}: layer type {kind} ({name}) is not supported by the NumPy path")
        names.append(name)
    if not layers or not isinstance(layers[0], LSTMLayer):
        raise InferenceError(f"{path}: the first layer must be an LSTM")
    if input_shape is None or len(input_shape) != 2:
        input_shape = (None, layers[0].kernel.shape[0])
    if input_shape[1] != layers[0].kernel.shape[0]:
        raise InferenceError(f"{path}: input has {input_shape[1]} features but the LSTM kernel "
                             f"expects {layers[0].kernel.shape[0]}")
    seq = True
    for layer in layers:                            # shapes must chain like Keras would
        if isinstance(layer, LSTMLayer):
            if not seq:
                raise InferenceError(f"{path}: LSTM {layer.name} follows a layer without sequences")
            seq = layer.return_sequences
        elif seq:
            raise InferenceError(f"{path}: Dense {layer.name} applied to a sequence is not supported")
    if seq:
        raise InferenceError(f"{path}: the model outputs a sequence, not one value per window")
    return LSTMNetwork(layers, (input_shape[0], int(input_shape[1])), keras_version, names)
