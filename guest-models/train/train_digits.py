#!/usr/bin/env python3
"""Train a small MLP on scikit-learn's bundled handwritten-digits data set and
export it for Airlock's guest models.

Run (from any directory; paths are resolved relative to this file):

    python3 -m venv guest-models/train/.venv
    guest-models/train/.venv/bin/pip install -r guest-models/train/requirements.txt
    guest-models/train/.venv/bin/python guest-models/train/train_digits.py

(or, with the venv activated: `python guest-models/train/train_digits.py`).

Everything is deterministic (fixed seeds, single-threaded BLAS), so re-running
it with the pinned requirements rewrites byte-identical files:

  guest-models/data/digits_mlp.bin    weights in the AIRMLP1 format (below)
  guest-models/data/digits_mlp.onnx   the same float32 weights as an ONNX graph
  guest-models/data/digits_test.json  the held-out test rows with labels and
                                      sklearn's reference predictions

Data: sklearn.datasets.load_digits() -- 1797 8x8 images, pixels 0..16, 10
classes. Stratified train_test_split(test_size=0.25, random_state=0).

Model: inputs are raw pixels 0..16; the model itself multiplies them by 1/16,
then hidden layers h = relu(h @ W + b), last layer z = h @ W + b, softmax(z).

AIRMLP1 format (little-endian, every field 4-byte aligned):

  bytes 0..8  magic b"AIRMLP1\\0"
  u32         number of layers L
  f32         input scale (0.0625)
  L times:
    u32       n_in
    u32       n_out
    f32 * n_in*n_out   weights, row-major (n_in, n_out): W[i][j] at i*n_out+j
    f32 * n_out        biases

The script checks that a float32 numpy implementation reading the .bin file
and onnxruntime running the .onnx file agree with sklearn, and exits non-zero
otherwise.
"""

import os

# Single-threaded BLAS so that training is bit-reproducible regardless of the
# machine's core count. Must be set before numpy is imported.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import json  # noqa: E402
import struct  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
import sklearn  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402
from sklearn.neural_network import MLPClassifier  # noqa: E402

SCRIPT_DIR = Path(__file__).resolve().parent
DATA_DIR = SCRIPT_DIR.parent / "data"
BIN_PATH = DATA_DIR / "digits_mlp.bin"
ONNX_PATH = DATA_DIR / "digits_mlp.onnx"
JSON_PATH = DATA_DIR / "digits_test.json"

MAGIC = b"AIRMLP1\0"
INPUT_SCALE = np.float32(1.0 / 16.0)
SEED = 0
TEST_SIZE = 0.25

HIDDEN_LAYERS = (64,)
MLP_PARAMS = dict(
    hidden_layer_sizes=HIDDEN_LAYERS,
    activation="relu",
    solver="adam",
    alpha=1e-4,
    learning_rate_init=3e-3,
    max_iter=1000,
    tol=1e-6,
    n_iter_no_change=50,
    random_state=SEED,
)

ONNX_OPSET = 13
ONNX_IR_VERSION = 8


def fail(msg):
    print(f"VERIFICATION FAILED: {msg}", file=sys.stderr)
    sys.exit(1)


def write_bin(path, layers):
    """layers: list of (W float32 (n_in, n_out), b float32 (n_out,))."""
    out = bytearray(MAGIC)
    out += struct.pack("<I", len(layers))
    out += struct.pack("<f", INPUT_SCALE)
    for w, b in layers:
        n_in, n_out = w.shape
        out += struct.pack("<II", n_in, n_out)
        out += np.ascontiguousarray(w, dtype="<f4").tobytes()
        out += np.ascontiguousarray(b, dtype="<f4").tobytes()
    path.write_bytes(bytes(out))


def read_bin(path):
    """Independent reader of the AIRMLP1 format; returns (scale, layers)."""
    data = path.read_bytes()
    if data[:8] != MAGIC:
        fail(f"{path}: bad magic {data[:8]!r}")
    (n_layers,) = struct.unpack_from("<I", data, 8)
    (scale,) = struct.unpack_from("<f", data, 12)
    off = 16
    layers = []
    for _ in range(n_layers):
        n_in, n_out = struct.unpack_from("<II", data, off)
        off += 8
        w = np.frombuffer(data, dtype="<f4", count=n_in * n_out, offset=off)
        off += 4 * n_in * n_out
        b = np.frombuffer(data, dtype="<f4", count=n_out, offset=off)
        off += 4 * n_out
        layers.append((w.reshape(n_in, n_out), b))
    if off != len(data):
        fail(f"{path}: {len(data) - off} trailing bytes")
    return np.float32(scale), layers


def forward_f32(x, scale, layers):
    """float32 reference forward pass with the AIRMLP1 semantics."""
    h = x.astype(np.float32) * scale
    for k, (w, b) in enumerate(layers):
        h = h @ w + b
        if k < len(layers) - 1:
            h = np.maximum(h, np.float32(0))
    z = h - h.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def build_onnx(layers):
    n_in = layers[0][0].shape[0]
    n_classes = layers[-1][0].shape[1]
    initializers = [
        numpy_helper.from_array(np.array(INPUT_SCALE, dtype=np.float32), "input_scale")
    ]
    nodes = [helper.make_node("Mul", ["input", "input_scale"], ["scaled"], name="scale")]
    cur = "scaled"
    for k, (w, b) in enumerate(layers):
        last = k == len(layers) - 1
        initializers.append(numpy_helper.from_array(w, f"W{k}"))
        initializers.append(numpy_helper.from_array(b, f"b{k}"))
        nodes.append(helper.make_node("MatMul", [cur, f"W{k}"], [f"mm{k}"], name=f"matmul{k}"))
        add_out = "logits" if last else f"pre{k}"
        nodes.append(helper.make_node("Add", [f"mm{k}", f"b{k}"], [add_out], name=f"add{k}"))
        if last:
            cur = add_out
        else:
            nodes.append(helper.make_node("Relu", [add_out], [f"h{k}"], name=f"relu{k}"))
            cur = f"h{k}"
    nodes.append(
        helper.make_node("Softmax", [cur], ["probabilities"], name="softmax", axis=1)
    )
    graph = helper.make_graph(
        nodes,
        "digits_mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", n_in])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", n_classes])],
        initializer=initializers,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", ONNX_OPSET)],
        producer_name="airlock-train_digits",
        producer_version="1",
    )
    model.ir_version = ONNX_IR_VERSION
    model.doc_string = (
        "MLP on sklearn load_digits; input: raw 8x8 pixels 0..16 flattened to 64 floats"
    )
    onnx.checker.check_model(model, full_check=True)
    return model


def write_json(path, doc, inputs, probs):
    """One test row per line for readable diffs."""
    head = {k: v for k, v in doc.items()}
    parts = ["{"]
    for key, val in head.items():
        parts.append(f"{json.dumps(key)}: {json.dumps(val)},")

    def rows(key, data, last=False):
        parts.append(f"{json.dumps(key)}: [")
        for i, row in enumerate(data):
            sep = "," if i < len(data) - 1 else ""
            parts.append(json.dumps(row, separators=(",", ":")) + sep)
        parts.append("]" + ("" if last else ","))

    rows("inputs", inputs)
    rows("reference_probabilities", probs, last=True)
    parts.append("}")
    text = "\n".join(parts) + "\n"
    json.loads(text)  # sanity: valid JSON
    path.write_text(text, encoding="utf-8", newline="\n")


def main():
    np.random.seed(SEED)
    digits = load_digits()
    X = digits.data.astype(np.float64)  # raw 0..16
    y = digits.target.astype(np.int64)
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=TEST_SIZE, random_state=SEED, stratify=y
    )

    clf = MLPClassifier(**MLP_PARAMS)
    clf.fit(X_train * float(INPUT_SCALE), y_train)
    train_acc = float(clf.score(X_train * float(INPUT_SCALE), y_train))
    sk_pred = clf.predict(X_test * float(INPUT_SCALE))
    sk_proba = clf.predict_proba(X_test * float(INPUT_SCALE))
    test_acc = float(np.mean(sk_pred == y_test))

    layers = [
        (np.asarray(w, dtype=np.float32), np.asarray(b, dtype=np.float32))
        for w, b in zip(clf.coefs_, clf.intercepts_)
    ]

    DATA_DIR.mkdir(parents=True, exist_ok=True)

    # --- AIRMLP1 binary + independent float32 check ---
    write_bin(BIN_PATH, layers)
    scale, bin_layers = read_bin(BIN_PATH)
    if scale != INPUT_SCALE or len(bin_layers) != len(layers):
        fail("bin header mismatch")
    np_proba = forward_f32(X_test, scale, bin_layers)
    np_pred = np_proba.argmax(axis=1)
    if not np.array_equal(np_pred, sk_pred):
        fail(f"numpy(.bin) argmax differs from sklearn on {int(np.sum(np_pred != sk_pred))} rows")
    d_np_sk = float(np.max(np.abs(np_proba - sk_proba)))
    if d_np_sk > 1e-5:
        fail(f"numpy(.bin) probabilities differ from sklearn by {d_np_sk}")

    # --- ONNX + onnxruntime check ---
    model = build_onnx(layers)
    ONNX_PATH.write_bytes(model.SerializeToString(deterministic=True))
    sess = ort.InferenceSession(str(ONNX_PATH), providers=["CPUExecutionProvider"])
    ort_proba = sess.run(["probabilities"], {"input": X_test.astype(np.float32)})[0]
    if ort_proba.shape != (len(X_test), 10):
        fail(f"onnxruntime output shape {ort_proba.shape}")
    ort_pred = ort_proba.argmax(axis=1)
    if not np.array_equal(ort_pred, sk_pred):
        fail(f"onnxruntime argmax differs from sklearn on {int(np.sum(ort_pred != sk_pred))} rows")
    d_ort_np = float(np.max(np.abs(ort_proba - np_proba)))
    d_ort_sk = float(np.max(np.abs(ort_proba - sk_proba)))
    if d_ort_np > 1e-5 or d_ort_sk > 1e-5:
        fail(f"onnxruntime probabilities differ: vs numpy {d_ort_np}, vs sklearn {d_ort_sk}")

    # --- test-set JSON ---
    doc = {
        "description": (
            "Held-out test rows of sklearn's load_digits (8x8 images flattened row-major "
            "to 64 raw pixel values 0..16) with true labels and the reference predictions "
            "of the MLP in digits_mlp.bin / digits_mlp.onnx (sklearn MLPClassifier; "
            "reference_probabilities from predict_proba, rounded to 6 decimals). "
            "Generated by guest-models/train/train_digits.py."
        ),
        "dataset": "sklearn load_digits",
        "split": {
            "method": "sklearn.model_selection.train_test_split",
            "test_size": TEST_SIZE,
            "random_state": SEED,
            "stratify": "labels",
            "n_train": int(len(X_train)),
            "n_test": int(len(X_test)),
        },
        "model": {
            "layers": [[int(w.shape[0]), int(w.shape[1])] for w, _ in layers],
            "hidden_activation": "relu",
            "output": "softmax",
            "input_scale": float(INPUT_SCALE),
        },
        "sklearn_version": sklearn.__version__,
        "labels": [int(v) for v in y_test],
        "reference_predictions": [int(v) for v in sk_pred],
        "reference_accuracy": round(test_acc, 6),
        "train_accuracy": round(train_acc, 6),
    }
    inputs = [[int(round(v)) for v in row] for row in X_test]
    probs = [[round(float(p), 6) for p in row] for row in sk_proba]
    write_json(JSON_PATH, doc, inputs, probs)

    print(f"sklearn {sklearn.__version__}, numpy {np.__version__}, "
          f"onnx {onnx.__version__}, onnxruntime {ort.__version__}")
    print(f"layers: {' -> '.join([str(layers[0][0].shape[0])] + [str(w.shape[1]) for w, _ in layers])}"
          f" (adam iterations: {clf.n_iter_})")
    print(f"train accuracy: {train_acc:.4f}  test accuracy: {test_acc:.4f} "
          f"({int(np.sum(sk_pred == y_test))}/{len(y_test)})")
    print(f"max |p| diff: numpy(.bin) vs sklearn {d_np_sk:.2e}, "
          f"onnxruntime vs numpy {d_ort_np:.2e}, onnxruntime vs sklearn {d_ort_sk:.2e}")
    for p in (BIN_PATH, ONNX_PATH, JSON_PATH):
        print(f"wrote {p.relative_to(SCRIPT_DIR.parent.parent)}: {p.stat().st_size} bytes")
    print("verification OK")


if __name__ == "__main__":
    main()
