"""lstm_inference.py: the NumPy forward pass equals Keras's predict within 1e-5."""
import ast
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import constants as C
import lstm_inference
import model_management as mm
import model_training

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _keras():
    import keras   # late: TensorFlow takes seconds to import; only the parity tests need it
    return keras


@pytest.mark.parametrize("window,units,layers,dense", [
    (5, 4, 1, 0), (10, 16, 1, 8), (20, 32, 1, 16), (12, 8, 2, 4), (7, 3, 2, 0)])
def test_parity_with_keras(tmp_path, window, units, layers, dense):
    keras = _keras()
    keras.utils.set_random_seed(window * 100 + units)
    net = model_training.build_network(window, 8, units, dense, layers, 1e-2)
    rng = np.random.default_rng(window)
    X = rng.normal(0, 1.5, (300, window, 8)).astype(np.float32)
    y = (X[:, -1, 0] * 0.3 + rng.normal(0, 1, 300)).astype(np.float32)
    net.fit(X, y, epochs=2, batch_size=64, verbose=0)       # real (trained) weights, not the init
    path = tmp_path / "m.h5"
    net.save(path)
    expected = net.predict(X, verbose=0)
    fast = lstm_inference.load_network(path)
    got = fast.predict(X)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    assert fast.window == window and fast.n_features == 8
    assert [d["type"] for d in fast.describe()].count("LSTM") == layers
    # reloaded through Keras too (what a user of the .h5 sees)
    reloaded = keras.models.load_model(path, compile=False)
    np.testing.assert_allclose(got, reloaded.predict(X, verbose=0), atol=1e-5, rtol=0)


def test_parity_on_the_trained_model(trained):
    keras = _keras()
    home = trained["home"]
    model = mm.load_model(home / C.MODEL_FILE)
    feats = pd.read_csv(home / C.PROCESSED_DATA_FILE, parse_dates=["Date"])
    X, _ = mm.make_windows(feats, model.window, model.feature_columns, model.scaler)
    expected = keras.models.load_model(home / C.MODEL_FILE, compile=False).predict(X, batch_size=4096, verbose=0)
    got = lstm_inference.load_network(home / C.MODEL_FILE).predict(X)
    assert len(X) > 15000
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)


def test_unsupported_models_are_refused(tmp_path):
    keras = _keras()
    gru = keras.Sequential([keras.Input((5, 3)), keras.layers.GRU(4), keras.layers.Dense(1)])
    gru.save(tmp_path / "gru.h5")
    with pytest.raises(lstm_inference.InferenceError, match="GRU"):
        lstm_inference.load_network(tmp_path / "gru.h5")
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(lstm_inference.InferenceError):
        lstm_inference.load_network(tmp_path / "junk.h5")


def test_windows_of_wrong_shape_are_refused(trained):
    home = trained["home"]
    net = lstm_inference.load_network(home / C.MODEL_FILE)
    with pytest.raises(lstm_inference.InferenceError):
        net.predict(np.zeros((2, net.window, net.n_features + 1)))
    assert net.predict(np.zeros((0, net.window, net.n_features))).shape == (0, 1)


@pytest.mark.parametrize("name", ["lstm_inference.py", "model_management.py"])
def test_fast_path_modules_do_not_import_tensorflow(name):
    tree = ast.parse((ROOT / name).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & {"tensorflow", "keras", "tf_keras"}, imported
