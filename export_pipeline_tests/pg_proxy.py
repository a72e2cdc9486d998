"""A TCP proxy in front of PostgreSQL that can drop the startup packet's `options`, the way a
connection pooler (PgBouncer with `ignore_startup_parameters = options`) does.

It answers SSL/GSS encryption requests with 'N' (plain text, as PgBouncer without TLS), rewrites
the StartupMessage without the `options` parameter when `strip_options` is set, and then relays
bytes both ways. With `hold_from=n` it also parks the n-th and later connections (counting
from 0) until `release()`: a deterministic point between an export's first session and its
second (the Parquet reader's). Real sockets, real protocol; nothing of the project is replaced.
"""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress

from psycopg.conninfo import conninfo_to_dict, make_conninfo

_SSL_REQUEST = 80877103
_GSSENC_REQUEST = 80877104


def _read_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("peer closed during startup")
        data += chunk
    return data


def _startup(client: socket.socket) -> bytes:
    """Read the client's StartupMessage (after refusing encryption requests)."""
    while True:
        length, code = struct.unpack("!ii", _read_exact(client, 8))
        if code in (_SSL_REQUEST, _GSSENC_REQUEST):
            client.sendall(b"N")
            continue
        return struct.pack("!i", code) + _read_exact(client, length - 8)


def _without_options(body: bytes) -> bytes:
    """The StartupMessage body (protocol + key\\0value\\0 pairs) without `options`."""
    protocol, fields = body[:4], body[4:].split(b"\x00")
    pairs = [(fields[i], fields[i + 1]) for i in range(0, len(fields) - 2, 2) if fields[i]]
    kept = b"".join(k + b"\x00" + v + b"\x00" for k, v in pairs if k != b"options")
    return protocol + kept + b"\x00"


def _relay(src: socket.socket, dst: socket.socket) -> None:
    with suppress(OSError):
        while data := src.recv(65536):
            dst.sendall(data)
    with suppress(OSError):
        dst.shutdown(socket.SHUT_WR)


class PgProxy:
    def __init__(
        self, upstream_dsn: str, *, strip_options: bool, hold_from: int | None = None
    ) -> None:
        params = conninfo_to_dict(upstream_dsn)
        self._host = str(params.get("host", "127.0.0.1"))
        self._port = int(params.get("port", 5432))
        self._params = params
        self.strip_options = strip_options
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.startups: list[bytes] = []  # what reached the server, for the test to inspect
        self._sockets: list[socket.socket] = []
        self._hold_from = hold_from
        self._accepted = 0
        self.holding = threading.Event()  # a connection is parked
        self._gate = threading.Event()

    def release(self) -> None:
        self._gate.set()

    def dsn(self) -> str:
        """The upstream DSN, pointed at the proxy (no TLS: the proxy speaks plain text)."""
        return make_conninfo(
            "",
            **{**self._params, "host": "127.0.0.1", "port": str(self.port), "sslmode": "disable"},
        )

    def _upstream(self) -> socket.socket:
        if self._host.startswith("/"):  # a Unix socket directory (the embedded test server)
            sock = socket.socket(socket.AF_UNIX)
            sock.connect(f"{self._host}/.s.PGSQL.{self._port}")
            return sock
        return socket.create_connection((self._host, self._port))

    def _serve(self, client: socket.socket, index: int) -> None:
        if self._hold_from is not None and index >= self._hold_from:
            self.holding.set()
            self._gate.wait()
        try:
            body = _startup(client)
            if self.strip_options:
                body = _without_options(body)
            self.startups.append(body)
            server = self._upstream()
            server.sendall(struct.pack("!i", len(body) + 4) + body)
        except (OSError, ConnectionError):
            client.close()
            return
        self._sockets += [client, server]
        threading.Thread(target=_relay, args=(server, client), daemon=True).start()
        _relay(client, server)

    def _accept(self) -> None:
        with suppress(OSError):
            while True:
                client, _ = self._listener.accept()
                index, self._accepted = self._accepted, self._accepted + 1
                threading.Thread(target=self._serve, args=(client, index), daemon=True).start()

    def close(self) -> None:
        self._gate.set()
        self._listener.close()
        for sock in self._sockets:
            with suppress(OSError):
                sock.close()


@contextmanager
def pg_proxy(
    upstream_dsn: str, *, strip_options: bool = False, hold_from: int | None = None
) -> Iterator[PgProxy]:
    proxy = PgProxy(upstream_dsn, strip_options=strip_options, hold_from=hold_from)
    thread = threading.Thread(target=proxy._accept, daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        proxy.close()
        thread.join(timeout=5)
