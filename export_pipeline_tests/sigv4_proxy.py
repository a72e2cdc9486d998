"""An S3 front door that checks AWS Signature Version 4, in front of moto's server.

moto stores objects faithfully but does not verify signatures, so a presigned link signed with
SigV2, the wrong secret, the wrong region or an expired date would still download there. This
proxy verifies every request (Authorization header or presigned query string) with an
independent implementation of the SigV4 algorithm, answers 403 when it does not match, and
forwards the rest to moto unchanged.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import threading
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ALGORITHM = "AWS4-HMAC-SHA256"


class SignatureError(Exception):
    pass


class Faults:
    """Injected S3 failures: the next `count` requests matching a method and a path fragment
    get an error answer instead of reaching the server (`fail_next`; status 200 sends an
    <Error> document with a 200, as S3 may on CompleteMultipartUpload), or are held open with
    no answer until the client's read timeout has passed, then dropped (`hold_next`).
    Thread-safe; counts are exact. `release()` ends every hold (fixture teardown)."""

    HOLD = 0  # status of a hold rule

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rules: list[list] = []  # [method, fragment, remaining, status, code]
        self._released = threading.Event()
        self.injected = 0

    def fail_next(
        self, method: str, fragment: str, count: int, status: int = 503, code: str = "SlowDown"
    ) -> None:
        with self._lock:
            self._rules.append([method, fragment, count, status, code])

    def hold_next(self, method: str, fragment: str, count: int) -> None:
        with self._lock:
            self._rules.append([method, fragment, count, self.HOLD, ""])

    def seen(self, method: str, target: str, body: bytes) -> None:
        """Called with every request whose signature checks out, before `take` (a hook for
        recorders, see request_counts.py; nothing here)."""

    def take(self, method: str, target: str) -> tuple[int, str] | None:
        with self._lock:
            for rule in self._rules:
                if rule[0] == method and rule[1] in target and rule[2] > 0:
                    rule[2] -= 1
                    self.injected += 1
                    return rule[3], rule[4]
        return None

    def hold(self, seconds: float) -> None:
        """Keep a request unanswered for `seconds` (or until released)."""
        self._released.wait(seconds)

    def release(self) -> None:
        self._released.set()


def _quote(text: str) -> str:
    return urllib.parse.quote(text, safe="-_.~")


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


Clock = Callable[[], datetime]


def _now() -> datetime:
    return datetime.now(UTC)


def verify(
    method: str,
    target: str,
    headers: dict[str, str],
    secrets: Mapping[str, str],
    clock: Clock = _now,
    tokens: Mapping[str, str] | None = None,
) -> None:
    """Raise SignatureError unless the request carries a valid SigV4 signature.

    Presigned URLs are also checked for expiry against `clock` (X-Amz-Date + X-Amz-Expires).
    Keys in `tokens` are temporary: their session token must come with the request.
    """
    split = urllib.parse.urlsplit(target)
    pairs = urllib.parse.parse_qsl(split.query, keep_blank_values=True)
    query = dict(pairs)
    lower = {k.lower(): v for k, v in headers.items()}
    if "X-Amz-Signature" in query:  # presigned URL
        if query.get("X-Amz-Algorithm") != ALGORITHM:
            raise SignatureError(f"algorithm {query.get('X-Amz-Algorithm')!r} is not SigV4")
        credential, signed_names = query["X-Amz-Credential"], query["X-Amz-SignedHeaders"]
        amz_date, signature = query["X-Amz-Date"], query["X-Amz-Signature"]
        issued = datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        if clock() > issued + timedelta(seconds=int(query["X-Amz-Expires"])):
            raise SignatureError("presigned URL has expired")
        pairs = [(k, v) for k, v in pairs if k != "X-Amz-Signature"]
        payload_hash = "UNSIGNED-PAYLOAD"
    else:
        auth = lower.get("authorization", "")
        if not auth.startswith(ALGORITHM + " "):
            raise SignatureError("request is not signed with SigV4")
        fields = dict(p.strip().split("=", 1) for p in auth[len(ALGORITHM) + 1 :].split(","))
        credential, signed_names = fields["Credential"], fields["SignedHeaders"]
        signature, amz_date = fields["Signature"], lower["x-amz-date"]
        payload_hash = lower.get("x-amz-content-sha256", "UNSIGNED-PAYLOAD")
    key_id, day, region, service, terminal = credential.split("/")
    if key_id not in secrets or terminal != "aws4_request":
        raise SignatureError(f"unknown access key {key_id!r}")
    if tokens and key_id in tokens:
        sent = query.get("X-Amz-Security-Token") or lower.get("x-amz-security-token")
        if sent is None or not hmac.compare_digest(sent, tokens[key_id]):
            raise SignatureError(f"missing or wrong session token for {key_id!r}")
    canonical_query = "&".join(f"{_quote(k)}={_quote(v)}" for k, v in sorted(pairs))
    names = signed_names.split(";")
    canonical_headers = "".join(f"{n}:{' '.join(lower[n].split())}\n" for n in names)
    canonical_request = "\n".join(
        [method, split.path or "/", canonical_query, canonical_headers, signed_names, payload_hash]
    )
    scope = f"{day}/{region}/{service}/aws4_request"
    string_to_sign = "\n".join(
        [ALGORITHM, amz_date, scope, hashlib.sha256(canonical_request.encode()).hexdigest()]
    )
    key = ("AWS4" + secrets[key_id]).encode()
    for part in (day, region, service, "aws4_request"):
        key = _hmac(key, part)
    expected = hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, signature):
        raise SignatureError("signature does not match")


def _handler(
    upstream: str,
    secrets: Mapping[str, str],
    faults: Faults | None,
    clock: Clock,
    tokens: Mapping[str, str] | None,
) -> type[BaseHTTPRequestHandler]:
    target = urllib.parse.urlsplit(upstream)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def _relay(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            try:
                verify(self.command, self.path, dict(self.headers.items()), secrets, clock, tokens)
            except (SignatureError, KeyError, ValueError) as exc:
                self._error(403, "SignatureDoesNotMatch", str(exc))
                return
            if faults:
                faults.seen(self.command, self.path, body)
            fault = faults.take(self.command, self.path) if faults else None
            if fault is not None and fault[0] == Faults.HOLD:
                assert faults is not None
                faults.hold(30)  # far past the client's read timeout in the tests
                self.close_connection = True  # then drop it, unanswered
                return
            if fault is not None:
                self._error(fault[0], fault[1], "injected by the test")
                return
            conn = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
            conn.request(self.command, self.path, body=body, headers=dict(self.headers.items()))
            response = conn.getresponse()
            data = response.read()
            self.send_response(response.status)
            # A HEAD answer has no body but keeps the object's Content-Length.
            relayed = {"transfer-encoding", "connection"}
            if self.command != "HEAD":
                relayed.add("content-length")
            for name, value in response.getheaders():
                if name.lower() not in relayed:
                    self.send_header(name, value)
            if self.command != "HEAD":
                self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
            conn.close()

        def _error(self, status: int, code: str, message: str) -> None:
            data = f"<Error><Code>{code}</Code><Message>{message}</Message></Error>".encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _relay

    return Handler


@contextmanager
def sigv4_proxy(
    upstream: str,
    secrets: Mapping[str, str],
    faults: Faults | None = None,
    clock: Clock = _now,
    tokens: Mapping[str, str] | None = None,
) -> Iterator[str]:
    """An endpoint URL that verifies signatures, then forwards to `upstream` (or answers with
    an error that `faults` injects). `secrets` and `tokens` are read per request, so a test may
    add temporary credentials after the proxy started; `clock` judges link expiry."""
    handler = _handler(upstream, secrets, faults, clock, tokens)
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        thread.join()
