"""Talks to a running Airlock server with Triton's HTTP client (tritonclient),
a real Open Inference Protocol client: TLS verified against the server's CA,
and tensors in the binary tensor data format unless told otherwise.

Usage: triton_client.py HOST:PORT CA_PEM DIGITS_TEST_JSON

Prints one JSON object with what the client saw; tests/all/clients.rs checks
it. Any exception the client raises where it should not fails the script.
"""

import json
import sys

import numpy as np
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException


def main() -> None:
    url, ca_pem, test_path = sys.argv[1:4]
    client = httpclient.InferenceServerClient(
        url=url, ssl=True, ssl_options={"ca_certs": ca_pem}
    )
    with open(test_path) as f:
        test = json.load(f)
    rows = np.asarray(test["inputs"][:32], dtype=np.float32)

    report = {
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "extensions": client.get_server_metadata()["extensions"],
        "model_ready": client.is_model_ready("digits"),
        "model_inputs": client.get_model_metadata("digits")["inputs"],
    }

    for binary in (True, False):
        tensor = httpclient.InferInput("input", list(rows.shape), "FP32")
        tensor.set_data_from_numpy(rows, binary_data=binary)
        wanted = httpclient.InferRequestedOutput("probabilities", binary_data=binary)
        result = client.infer("digits", [tensor], outputs=[wanted], request_id="tc")
        probabilities = result.as_numpy("probabilities")
        report["binary" if binary else "json"] = {
            "id": result.get_response()["id"],
            "shape": list(probabilities.shape),
            "dtype": str(probabilities.dtype),
            "predictions": probabilities.argmax(axis=1).tolist(),
        }

    # BYTES both ways (the client's default: binary).
    texts = np.array(
        [b"the children are playing football in the garden after school",
         b"die Kinder spielen nach der Schule im Garten Fussball"],
        dtype=np.object_,
    )
    tensor = httpclient.InferInput("text", [2], "BYTES")
    tensor.set_data_from_numpy(texts)
    result = client.infer(
        "langid", [tensor], outputs=[httpclient.InferRequestedOutput("language")]
    )
    report["languages"] = [v.decode() for v in result.as_numpy("language").tolist()]

    # A request the server refuses: the client raises with its message.
    wrong = httpclient.InferInput("input", [1, 63], "FP32")
    wrong.set_data_from_numpy(np.zeros((1, 63), dtype=np.float32))
    try:
        client.infer("digits", [wrong])
        report["refused"] = None
    except InferenceServerException as e:
        report["refused"] = {"status": e.status(), "message": e.message()}

    client.close()
    print(json.dumps(report))


if __name__ == "__main__":
    main()
