#!/usr/bin/env python3
"""Cold-start time of the Lambda `bootstrap`: process start -> first response.

Runs the release-built `target/release/bootstrap` under the Lambda runtime
API emulator (`cargo lambda watch --only-lambda-apis`) with its store in a
moto S3 server, both on free ports on 127.0.0.1, and times, for each model
alone in its own store prefix:

  local   the compiled artifact is in the instance's /tmp (a warm restart)
  s3      /tmp is empty, the artifact is in S3 (a real cold start after
          another instance compiled it)
  absent  no artifact anywhere: the model is compiled during init

The first request is sent before the process starts (the emulator holds it
until the function asks for work), so the figure is exec -> response.
Not a test: a measurement, run by hand after `tests/run` (which builds the
binaries and installs the emulators into target/test-venv):

    target/test-venv/bin/python host/benches/lambda_init.py [--runs 5]
        [--models digits] [--cases local] [--phases]

`--phases` also prints, per run, the function's own account of its init
(engine set-up and, alongside it, store listing and index reads, then
model loading, and the total) from its JSON log.
"""

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
VENV = os.path.join(ROOT, "target", "test-venv", "bin")
# AIRLOCK_BOOTSTRAP: another build to time (e.g. before a change).
BOOTSTRAP = os.environ.get("AIRLOCK_BOOTSTRAP",
                           os.path.join(ROOT, "target", "release", "bootstrap"))
AIRLOCK = os.path.join(ROOT, "target", "release", "airlock")
GUESTS = os.path.join(ROOT, "target", "wasm-guests", "wasm32-wasip2", "release")
BUCKET = "airlock-init"
TOKEN = "init-token"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=60):
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def tool(name):
    path = os.path.join(VENV, name)
    return path if os.path.exists(path) else shutil.which(name)


def start_emulator():
    port = free_port()
    proc = subprocess.Popen(
        [tool("cargo-lambda"), "lambda", "watch", "--only-lambda-apis", "--ignore-changes",
         "-A", "127.0.0.1", "-P", str(port)],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    return proc, port


def function_env(port, moto, prefix, data_dir):
    return {
        "PATH": os.environ["PATH"],
        "AWS_LAMBDA_RUNTIME_API": f"http://127.0.0.1:{port}/.rt",
        "AWS_LAMBDA_FUNCTION_NAME": "_",
        "AWS_LAMBDA_FUNCTION_VERSION": "1",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "1024",
        "AWS_LAMBDA_LOG_FORMAT": "JSON",
        "AWS_LAMBDA_LOG_LEVEL": "WARN",
        "AWS_ENDPOINT_URL": moto,
        "AWS_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AIRLOCK_STORE": f"s3://{BUCKET}/{prefix}",
        "AIRLOCK_DATA_DIR": data_dir,
        "AIRLOCK_ADMIN_TOKEN": TOKEN,
    }


def request(url, body=None, method="GET", timeout=600):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.status, r.read()


def first_response_ms(port, env, path, body, phases=False):
    """Starts the function with the request already queued; exec -> response.
    With `phases`, also returns the init figures the function logged."""
    result = {}

    def ask():
        result["status"], _ = request(f"http://127.0.0.1:{port}{path}", body,
                                      "POST" if body is not None else "GET")
        result["at"] = time.perf_counter()

    asker = threading.Thread(target=ask)
    asker.start()
    time.sleep(0.3)  # the request is queued in the emulator
    started = time.perf_counter()
    if phases:
        env = dict(env, AWS_LAMBDA_LOG_LEVEL="INFO")
    proc = subprocess.Popen([BOOTSTRAP], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE if phases else subprocess.DEVNULL)
    asker.join()
    proc.kill()
    _, err = proc.communicate()
    assert result["status"] == 200, result
    elapsed = (result["at"] - started) * 1e3
    if not phases:
        return elapsed
    figures = {}
    for line in (err or b"").decode(errors="replace").splitlines():
        try:
            fields = json.loads(line).get("fields", {})
        except ValueError:
            continue
        for key in ("engine_ms", "store_ms", "models_ms", "init_ms"):
            if key in fields:
                figures[key] = fields[key]
    return elapsed, figures


def s3(moto, method, key=""):
    req = urllib.request.Request(f"{moto}/{BUCKET}{key}", method=method)
    with urllib.request.urlopen(req) as r:
        return r.read()


def delete_artifacts(moto, prefix):
    import boto3  # comes with moto
    client = boto3.client("s3", endpoint_url=moto, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    listing = client.list_objects_v2(Bucket=BUCKET, Prefix=f"{prefix}/artifacts/")
    for item in listing.get("Contents", []):
        client.delete_object(Bucket=BUCKET, Key=item["Key"])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--models", default="digits,digits-onnx")
    parser.add_argument("--cases", default="local,s3,absent")
    parser.add_argument("--phases", action="store_true")
    args = parser.parse_args()
    models = args.models.split(",")
    cases = args.cases.split(",")

    moto_port = free_port()
    moto_proc = subprocess.Popen([tool("moto_server"), "-H", "127.0.0.1", "-p", str(moto_port)],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(moto_port)
    moto = f"http://127.0.0.1:{moto_port}"
    s3(moto, "PUT")
    emulator, port = start_emulator()
    rows = []
    try:
        request_body = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32",
                                    "data": [0.0] * 64}]}
        for name, file in [("digits", "digits.wasm"), ("digits-onnx", "digits_onnx.wasm")]:
            if name not in models:
                continue
            prefix = name
            tmp = tempfile.mkdtemp()
            env = function_env(port, moto, prefix, tmp)
            # Upload through a running function (it compiles and shares the artifact).
            proc = subprocess.Popen([BOOTSTRAP], env=env, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
            subprocess.run([AIRLOCK, "push", os.path.join(GUESTS, file), "--name", name,
                            "--activate", "--server", f"http://127.0.0.1:{port}",
                            "--token", TOKEN], check=True, stdout=subprocess.DEVNULL)
            proc.kill()
            proc.wait()
            path = f"/v2/models/{name}/infer"
            for case in cases:
                times = []
                for _ in range(args.runs):
                    if case != "local":
                        shutil.rmtree(tmp, ignore_errors=True)
                        os.makedirs(tmp)
                    if case == "absent":
                        delete_artifacts(moto, prefix)
                    if args.phases:
                        elapsed, figures = first_response_ms(port, env, path, request_body, True)
                        print(f"  {name} {case}: first response {elapsed:.1f} ms; " +
                              ", ".join(f"{k} {v:.1f}" for k, v in figures.items()), flush=True)
                        times.append(elapsed)
                    else:
                        times.append(first_response_ms(port, env, path, request_body))
                rows.append((name, case, statistics.median(times), min(times), max(times)))
                print(f"{name:12} {case:7} median {rows[-1][2]:8.1f} ms  "
                      f"min {rows[-1][3]:8.1f}  max {rows[-1][4]:8.1f}  ({args.runs} runs)",
                      flush=True)
    finally:
        emulator.kill()
        moto_proc.kill()


if __name__ == "__main__":
    sys.exit(main())
