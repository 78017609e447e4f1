#!/usr/bin/env python3
"""Checks one inference answer of a bench/run peer (JSON on stdin) against the
reference probabilities of the test row the request carried, as written by
guest-models/train/train_digits.py. Prints a one-line reason and exits 1 on a
mismatch. Standard library only.

Usage: check.py <digits_test.json> <row index> < response.json
"""

import json
import sys

reference = json.load(open(sys.argv[1]))
row = int(sys.argv[2])
expected = reference["reference_probabilities"][row]
label = reference["reference_predictions"][row]
try:
    answer = json.load(sys.stdin)
    (output,) = [o for o in answer["outputs"] if o["name"] == "probabilities"]
    data = output["data"]
    while data and isinstance(data[0], list):  # nested rows are valid OIP
        data = [v for r in data for v in r]
except Exception as e:  # noqa: BLE001 - any shape problem is a failed check
    sys.exit(f"not an OIP answer with a 'probabilities' output: {e}")
if output.get("datatype") != "FP32" or list(output.get("shape", [])) != [1, 10]:
    sys.exit(f"bad output tensor header: {output.get('datatype')} {output.get('shape')}")
worst = max(abs(a - b) for a, b in zip(data, expected))
top = max(range(len(data)), key=data.__getitem__)
if len(data) != 10 or top != label or worst > 1e-4:
    sys.exit(f"wrong prediction: class {top} (expected {label}), max |diff| {worst:.2e}")
print(f"ok: class {top}, max |diff| vs sklearn reference {worst:.1e}")
