#!/usr/bin/env python3
"""Train a small language identifier for Airlock's `langid` guest model.

Run (from any directory; paths are resolved relative to this file):

    python3 -m venv guest-models/train/.venv
    guest-models/train/.venv/bin/pip install -r guest-models/train/requirements.txt
    guest-models/train/.venv/bin/python guest-models/train/train_langid.py

Deterministic: re-running it with the pinned requirements rewrites
byte-identical files:

  guest-models/data/langid.bin        weights in the AIRLID1 format (below)
  guest-models/data/langid_test.json  the held-out texts with their labels and
                                      the reference predictions

Data: the translation catalogues that ship inside the Django wheel
(django/**/locale/<lang>/LC_MESSAGES/django.po): real text, translated by
people, for ten languages. English comes from the catalogues' source
strings (msgid), the other nine from their translations (msgstr). Nothing is
downloaded at run time; pip installs Django like any other dependency.
Placeholders (%(name)s, {0}), HTML tags and punctuation are removed, and
only strings of at least three words are kept.

Split: by source string, so that the translations of one message are all
in train or all in test (they are parallel texts: splitting them would leak
the test set's content into training). A message goes to test when the
CRC-32 of its msgid is 0 modulo 5 (about 20%).

Features (the guest computes exactly these; see guest-models/langid/src/lib.rs):
  1. lower-case the text (str.lower), replace every character that is not a
     letter (str.isalpha) by a space, collapse runs of spaces, strip, and pad
     with one space on each side;
  2. take every run of 1 to 4 consecutive characters (code points) that is
     not all spaces;
  3. hash its UTF-8 bytes with 32-bit FNV-1a; the bucket is hash % BUCKETS;
  4. count per bucket, then scale the vector to unit L2 norm.
Model: multinomial logistic regression (scikit-learn, lbfgs): softmax(x W + b).

AIRLID1 format (little-endian, every field 4 bytes):

  bytes 0..8  magic b"AIRLID1\\0"
  u32         number of classes K
  u32         number of buckets D
  f32 * D*K   weights, bucket-major: W[d][k] at d*K + k
  f32 * K     biases

The class order is LABELS below; the guest declares the same.
"""

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import ast  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import struct  # noqa: E402
import sys  # noqa: E402
import zlib  # noqa: E402
from pathlib import Path  # noqa: E402

import django  # noqa: E402
import numpy as np  # noqa: E402
import scipy.sparse as sp  # noqa: E402
import sklearn  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402

SCRIPT_DIR = Path(__file__).resolve().parent
DATA_DIR = SCRIPT_DIR.parent / "data"
BIN_PATH = DATA_DIR / "langid.bin"
JSON_PATH = DATA_DIR / "langid_test.json"

MAGIC = b"AIRLID1\0"
LABELS = ["de", "en", "es", "fr", "it", "nl", "pl", "pt", "ru", "sv"]
BUCKETS = 1 << 14
NGRAMS = (1, 4)
MIN_WORDS = 3
C = 20.0


def fail(msg):
    print(f"VERIFICATION FAILED: {msg}", file=sys.stderr)
    sys.exit(1)


def parse_po(path):
    """(msgctxt, msgid, [msgstr forms]) of the translated, non-fuzzy entries."""
    entries, cur, key, fuzzy = [], {}, None, False

    def flush():
        nonlocal cur, fuzzy
        if cur.get("msgid") and not fuzzy:
            forms = [v for k, v in sorted(cur.items()) if k.startswith("msgstr") and v]
            entries.append((cur.get("msgctxt", ""), cur["msgid"], cur.get("msgid_plural"), forms))
        cur, fuzzy = {}, False

    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line:
            flush()
            key = None
        elif line.startswith("#,"):
            fuzzy = fuzzy or "fuzzy" in line
        elif line.startswith("#"):
            continue
        elif line.startswith('"'):
            cur[key] += ast.literal_eval(line)
        else:
            key, _, value = line.partition(" ")
            cur[key] = ast.literal_eval(value)
    flush()
    return entries


PLACEHOLDER = re.compile(r"%\([^)]*\)[sdfr]|%[sdfr]|\{[^}]*\}|<[^>]*>")


def clean(text):
    text = PLACEHOLDER.sub(" ", text)
    return " ".join(text.split())


def normalize(text):
    letters = "".join(c if c.isalpha() else " " for c in text.lower())
    return " " + " ".join(letters.split()) + " "


def fnv1a(data):
    h = 0x811C9DC5
    for byte in data:
        h ^= byte
        h = (h * 0x01000193) & 0xFFFFFFFF
    return h


def features(text):
    """Bucket -> count for the n-grams of `text`, unnormalised."""
    chars = normalize(text)
    counts = {}
    for n in range(NGRAMS[0], NGRAMS[1] + 1):
        for i in range(len(chars) - n + 1):
            gram = chars[i:i + n]
            if gram.strip() == "":
                continue
            bucket = fnv1a(gram.encode("utf-8")) % BUCKETS
            counts[bucket] = counts.get(bucket, 0) + 1
    return counts


def matrix(texts):
    rows, cols, vals = [], [], []
    for r, text in enumerate(texts):
        counts = features(text)
        norm = np.sqrt(sum(c * c for c in counts.values())) or 1.0
        for bucket, count in sorted(counts.items()):
            rows.append(r)
            cols.append(bucket)
            vals.append(count / norm)
    return sp.csr_matrix((vals, (rows, cols)), shape=(len(texts), BUCKETS), dtype=np.float64)


def load_corpus():
    """[(text, label index, group key)] from Django's catalogues."""
    root = Path(django.__file__).resolve().parent
    samples, seen = [], set()
    english = {}
    for path in sorted(root.glob("**/locale/*/LC_MESSAGES/django.po")):
        lang = path.parts[-3]
        for ctx, msgid, plural, forms in parse_po(path):
            group = f"{ctx}|{msgid}"
            english[group] = [msgid] + ([plural] if plural else [])
            if lang not in LABELS or lang == "en":
                continue
            for form in forms:
                samples.append((form, LABELS.index(lang), group))
    for group, texts in sorted(english.items()):
        for text in texts:
            samples.append((text, LABELS.index("en"), group))
    out = []
    for text, label, group in samples:
        text = clean(text)
        if len(text.split()) < MIN_WORDS or (text, label) in seen:
            continue
        seen.add((text, label))
        out.append((text, label, group))
    return out


def is_test(group):
    return zlib.crc32(group.encode("utf-8")) % 5 == 0


def write_bin(path, weights, biases):
    out = bytearray(MAGIC)
    out += struct.pack("<II", weights.shape[1], weights.shape[0])
    out += np.ascontiguousarray(weights, dtype="<f4").tobytes()
    out += np.ascontiguousarray(biases, dtype="<f4").tobytes()
    path.write_bytes(bytes(out))


def read_bin(path):
    data = path.read_bytes()
    if data[:8] != MAGIC:
        fail(f"{path}: bad magic")
    k, d = struct.unpack_from("<II", data, 8)
    w = np.frombuffer(data, dtype="<f4", count=d * k, offset=16).reshape(d, k)
    b = np.frombuffer(data, dtype="<f4", count=k, offset=16 + 4 * d * k)
    if 16 + 4 * (d * k + k) != len(data):
        fail(f"{path}: trailing bytes")
    return w, b


def softmax64(x, w, b):
    z = x @ w.astype(np.float64) + b.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def main():
    corpus = load_corpus()
    train = [s for s in corpus if not is_test(s[2])]
    test = [s for s in corpus if is_test(s[2])]
    x_train, y_train = matrix([t for t, _, _ in train]), np.array([y for _, y, _ in train])
    x_test, y_test = matrix([t for t, _, _ in test]), np.array([y for _, y, _ in test])

    clf = LogisticRegression(C=C, max_iter=2000, tol=1e-6)
    clf.fit(x_train, y_train)
    if list(clf.classes_) != list(range(len(LABELS))):
        fail(f"classes {clf.classes_}")
    train_acc = float(clf.score(x_train, y_train))
    sk_proba = clf.predict_proba(x_test)
    sk_pred = sk_proba.argmax(axis=1)
    test_acc = float(np.mean(sk_pred == y_test))

    DATA_DIR.mkdir(parents=True, exist_ok=True)
    weights = clf.coef_.T.astype(np.float32)  # (D, K)
    biases = clf.intercept_.astype(np.float32)
    write_bin(BIN_PATH, weights, biases)
    w, b = read_bin(BIN_PATH)
    # The reference is what the guest computes: f32 weights, f64 arithmetic.
    ref_proba = softmax64(x_test, w, b)
    ref_pred = ref_proba.argmax(axis=1)
    if np.sum(ref_pred != sk_pred) > 0:
        fail(f"f32 weights change {int(np.sum(ref_pred != sk_pred))} predictions")
    diff = float(np.max(np.abs(ref_proba - sk_proba)))
    if diff > 1e-4:
        fail(f"f32 weights change probabilities by {diff}")
    ref_acc = float(np.mean(ref_pred == y_test))

    per_label = {
        LABELS[k]: {
            "train": int(np.sum(y_train == k)),
            "test": int(np.sum(y_test == k)),
            "test_accuracy": round(float(np.mean(ref_pred[y_test == k] == k)), 4),
        }
        for k in range(len(LABELS))
    }
    doc = {
        "description": (
            "Held-out test texts for the langid guest model: Django's translation catalogues "
            "(django.po in the Django wheel), split by source message. Labels index `labels`; "
            "reference_probabilities are softmax(x W + b) with the float32 weights of langid.bin "
            "in float64 arithmetic, rounded to 6 decimals. Generated by "
            "guest-models/train/train_langid.py."
        ),
        "source": f"Django {django.__version__} translation catalogues",
        "labels": LABELS,
        "features": {"ngrams": list(NGRAMS), "buckets": BUCKETS, "hash": "fnv1a-32"},
        "model": {"kind": "multinomial logistic regression", "C": C},
        "sklearn_version": sklearn.__version__,
        "per_label": per_label,
        "n_train": len(train),
        "n_test": len(test),
        "reference_accuracy": round(ref_acc, 6),
        "train_accuracy": round(train_acc, 6),
    }
    lines = ["{"]
    for key, value in doc.items():
        lines.append(f"{json.dumps(key)}: {json.dumps(value, ensure_ascii=False)},")
    for key, rows, last in (
        ("texts", [t for t, _, _ in test], False),
        ("targets", [int(y) for y in y_test], False),
        ("reference_predictions", [int(p) for p in ref_pred], False),
        ("reference_probabilities", [[round(float(p), 6) for p in row] for row in ref_proba], True),
    ):
        lines.append(f"{json.dumps(key)}: [")
        for i, row in enumerate(rows):
            sep = "," if i < len(rows) - 1 else ""
            lines.append(json.dumps(row, ensure_ascii=False, separators=(",", ":")) + sep)
        lines.append("]" + ("" if last else ","))
    lines.append("}")
    text = "\n".join(lines) + "\n"
    json.loads(text)
    JSON_PATH.write_text(text, encoding="utf-8", newline="\n")

    print(f"Django {django.__version__}, sklearn {sklearn.__version__}, numpy {np.__version__}")
    print(f"{len(train)} train / {len(test)} test texts, {BUCKETS} buckets, n-grams {NGRAMS}")
    print(f"train accuracy {train_acc:.4f}, test accuracy {test_acc:.4f} (f32 weights {ref_acc:.4f})")
    for label, stats in per_label.items():
        print(f"  {label}: {stats}")
    print(f"max |p| diff, f32 weights vs sklearn: {diff:.2e}")
    for p in (BIN_PATH, JSON_PATH):
        print(f"wrote {p.relative_to(SCRIPT_DIR.parent.parent)}: {p.stat().st_size} bytes")
    print("verification OK")


if __name__ == "__main__":
    main()
