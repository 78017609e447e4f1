#!/usr/bin/env python3
"""Benchmark peer: the digits MLP served by the KServe Python model server.

The network is a scikit-learn MLPClassifier whose weights are the committed
guest-models/data/digits_mlp.bin (the file the `digits` guest compiles in),
so every server in bench/run computes the same function. The file's input
scale (1/16) is applied before the classifier, as the guest does.

Run by bench/run as:

    digits_server.py --http_port PORT --grpc_port PORT2 --enable_grpc false

(KServe's own flags; it serves OIP v2 REST at /v2/models/digits/infer.)
"""

import struct
import sys
from pathlib import Path

import numpy as np
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer
from sklearn.neural_network import MLPClassifier
from sklearn.preprocessing import LabelBinarizer

WEIGHTS = Path(__file__).resolve().parents[2] / "guest-models" / "data" / "digits_mlp.bin"


def load_classifier(path):
    """Reads the AIRMLP1 file (format in guest-models/train/train_digits.py)
    into a fitted-looking MLPClassifier, and returns it with the input scale."""
    raw = path.read_bytes()
    if raw[:8] != b"AIRMLP1\0":
        sys.exit(f"{path}: bad magic")
    layers, scale = struct.unpack_from("<If", raw, 8)
    at = 16
    coefs, intercepts = [], []
    for _ in range(layers):
        n_in, n_out = struct.unpack_from("<II", raw, at)
        at += 8
        w = np.frombuffer(raw, "<f4", n_in * n_out, at).reshape(n_in, n_out)
        at += 4 * n_in * n_out
        b = np.frombuffer(raw, "<f4", n_out, at)
        at += 4 * n_out
        coefs.append(w.copy())
        intercepts.append(b.copy())
    if at != len(raw):
        sys.exit(f"{path}: trailing bytes")

    hidden = tuple(w.shape[1] for w in coefs[:-1])
    clf = MLPClassifier(hidden_layer_sizes=hidden, activation="relu")
    # What `fit` would have set; predict_proba needs nothing else.
    clf.coefs_ = coefs
    clf.intercepts_ = intercepts
    clf.n_layers_ = layers + 1
    clf.n_outputs_ = coefs[-1].shape[1]
    clf.n_features_in_ = coefs[0].shape[0]
    clf.out_activation_ = "softmax"
    clf._label_binarizer = LabelBinarizer().fit(np.arange(clf.n_outputs_))
    clf.classes_ = clf._label_binarizer.classes_
    return clf, np.float32(scale)


class Digits(Model):
    def __init__(self):
        super().__init__("digits")
        self.clf, self.scale = load_classifier(WEIGHTS)
        self.ready = True

    def predict(self, payload: InferRequest, headers=None, response_headers=None):
        tensor = payload.inputs[0]
        if tensor.name != "input" or tensor.datatype != "FP32":
            raise ValueError('expected one FP32 input "input"')
        x = np.asarray(tensor.as_numpy(), dtype=np.float32).reshape(-1, 64) * self.scale
        p = self.clf.predict_proba(x).astype(np.float32)
        out = InferOutput(name="probabilities", shape=list(p.shape), datatype="FP32", data=p.ravel().tolist())
        return InferResponse(
            response_id=payload.id, model_name=self.name, model_version="1", infer_outputs=[out]
        )


if __name__ == "__main__":
    ModelServer().start([Digits()])
