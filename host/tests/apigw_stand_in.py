"""A stand-in for API Gateway's AWS_IAM authorization, for host/tests/lambda.rs.

It sits between `airlock` (the client under test) and a Lambda function
under the runtime emulator, the way API Gateway sits in front of the
deployed function, and checks every request to the repository routes
(`/v2/repository/...`, the routes `infra` deploys as AWS_IAM) with an
independent SigV4 implementation: botocore's `SigV4Auth` recomputes the
canonical request from what actually arrived (method, path and query as
sent, the signed headers' values, the SHA-256 of the body received) and
the signature from the one identity it knows (AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN in its environment). A request
that does not match is refused with 403, as API Gateway does, and never
reaches the function. A verified one is forwarded with the function's
admin token in place of the signature: the emulator cannot put API
Gateway's `requestContext.authorizer.iam` into its events, so the token
stands for "API Gateway authorised this caller".

Paths under `/<bucket>` go to the S3 emulator (the function's S3 endpoint
is this process, so its presigned upload URLs point here too): a
presigned request (`X-Amz-Signature` in the query) that also carries an
`Authorization` header is refused with 400, as S3 refuses two
authentication mechanisms. Everything else (the public inference routes)
is passed through.

Usage: python apigw_stand_in.py --s3 URL --bucket NAME --token TOKEN
       --region REGION --log FILE
It prints the port it listens on, then reads the function's URL from its
standard input. Each request it sees is a JSON line in the log file.
"""

import argparse
import hashlib
import hmac
import http.client
import http.server
import json
import os
import sys
import threading
import urllib.parse

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

ADMIN_PREFIX = "/v2/repository/"
HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "expect",
    "content-length",
    "host",
}


def verify(method, target, headers, body, credentials, region):
    """None when the request is signed right for execute-api, else why not."""
    authorization = headers.get("Authorization")
    if not authorization:
        return "missing Authorization header"
    scheme = "AWS4-HMAC-SHA256 "
    if not authorization.startswith(scheme):
        return "not a SigV4 signature"
    try:
        fields = dict(
            part.strip().split("=", 1) for part in authorization[len(scheme):].split(",")
        )
        access_key, date, sig_region, service, terminator = fields["Credential"].split("/")
        signed = fields["SignedHeaders"].split(";")
        presented = fields["Signature"]
    except (KeyError, ValueError):
        return "malformed Authorization header"
    if access_key != credentials.access_key:
        return "unknown access key"
    if (sig_region, service, terminator) != (region, "execute-api", "aws4_request"):
        return f"wrong scope {sig_region}/{service}/{terminator}"
    amz_date = headers.get("X-Amz-Date")
    if not amz_date or not amz_date.startswith(date):
        return "missing or inconsistent X-Amz-Date"
    for required in ("host", "x-amz-date"):
        if required not in signed:
            return f"{required} is not signed"
    if credentials.token:
        if "x-amz-security-token" not in signed:
            return "the session token is not signed"
        if headers.get("X-Amz-Security-Token") != credentials.token:
            return "wrong session token"
    # A client-declared payload hash must be the body's: botocore takes the
    # header's word for it in the canonical request.
    declared = headers.get("X-Amz-Content-SHA256")
    if declared is not None and declared != hashlib.sha256(body).hexdigest():
        return "x-amz-content-sha256 is not the body's hash"
    signed_headers = {}
    for name in signed:
        values = headers.get_all(name)
        if values is None:
            return f"signed header {name} is missing"
        signed_headers[name] = ",".join(values)
    # https: botocore always hashes the payload then (and does over http too).
    request = AWSRequest(
        method=method,
        url="https://" + headers["Host"] + target,
        data=body,
        headers=signed_headers,
    )
    request.context["timestamp"] = amz_date
    signer = SigV4Auth(credentials, "execute-api", region)
    header_set = signer.signed_headers(signer.headers_to_sign(request))
    if header_set != fields["SignedHeaders"]:
        return f"signed header list {fields['SignedHeaders']} is not canonical ({header_set})"
    canonical = signer.canonical_request(request)
    expected = signer.signature(signer.string_to_sign(request, canonical), request)
    if not hmac.compare_digest(expected, presented):
        return "signature mismatch"
    return None


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "apigw-stand-in"

    def log_message(self, format, *args):  # noqa: A002 (the base class's name)
        pass

    def record(self, **entry):
        with self.server.log_lock, open(self.server.args.log, "a") as log:
            log.write(json.dumps(entry) + "\n")

    def read_body(self):
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            body = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return body
                body += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def answer(self, status, payload, headers=()):
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def forward(self, base, body, replace_auth=None):
        url = urllib.parse.urlsplit(base)
        connection = http.client.HTTPConnection(url.hostname, url.port, timeout=300)
        headers = {
            k: v
            for k, v in self.headers.items()
            if k.lower() not in HOP_BY_HOP
            and not (replace_auth and (k.lower() == "authorization" or k.lower().startswith("x-amz-")))
        }
        if replace_auth:
            headers["Authorization"] = replace_auth
        headers["Content-Length"] = str(len(body))
        connection.request(self.command, self.path, body=body, headers=headers)
        response = connection.getresponse()
        payload = response.read()
        out = [
            (k, v)
            for k, v in response.getheaders()
            if k.lower() not in HOP_BY_HOP and k.lower() != "content-length"
        ]
        connection.close()
        self.answer(response.status, payload, out)
        return response.status

    def handle_any(self):
        args = self.server.args
        body = self.read_body()
        path = urllib.parse.urlsplit(self.path)
        if path.path == f"/{args.bucket}" or path.path.startswith(f"/{args.bucket}/"):
            presigned = "X-Amz-Signature" in urllib.parse.parse_qs(path.query)
            authorized = "Authorization" in self.headers
            entry = dict(
                kind="s3", method=self.command, path=path.path,
                presigned=presigned, authorization=authorized,
            )
            if presigned and authorized:
                self.record(**entry, status=400)
                return self.answer(400, b"<Error><Code>InvalidArgument</Code><Message>"
                                   b"Only one auth mechanism allowed</Message></Error>")
            status = self.forward(args.s3, body)
            return self.record(**entry, status=status)
        if path.path.startswith(ADMIN_PREFIX) or path.path == "/v2/repository/index":
            reason = verify(
                self.command, self.path, self.headers, body,
                self.server.credentials, args.region,
            )
            if reason is not None:
                self.record(kind="admin", method=self.command, path=path.path,
                            verified=False, reason=reason, status=403)
                message = json.dumps({"message": f"Forbidden: {reason}"}).encode()
                return self.answer(403, message, [("Content-Type", "application/json")])
            status = self.forward(self.server.function(), body, f"Bearer {args.token}")
            return self.record(kind="admin", method=self.command, path=path.path,
                               query=path.query, verified=True, status=status)
        status = self.forward(self.server.function(), body)
        self.record(kind="public", method=self.command, path=path.path, status=status)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = handle_any


def main():
    parser = argparse.ArgumentParser()
    for flag in ("--s3", "--bucket", "--token", "--region", "--log"):
        parser.add_argument(flag, required=True)
    args = parser.parse_args()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.args = args
    server.log_lock = threading.Lock()
    server.credentials = Credentials(
        os.environ["AWS_ACCESS_KEY_ID"],
        os.environ["AWS_SECRET_ACCESS_KEY"],
        os.environ.get("AWS_SESSION_TOKEN"),
    )
    function = {}
    ready = threading.Event()

    def read_function():
        function["url"] = sys.stdin.readline().strip()
        ready.set()

    threading.Thread(target=read_function, daemon=True).start()

    def function_url():
        ready.wait()
        return function["url"]

    server.function = function_url
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
