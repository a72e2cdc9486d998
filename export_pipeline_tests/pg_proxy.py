"""A TCP proxy in front of PostgreSQL that can drop the startup packet's `options`, the way a
connection pooler (PgBouncer with `ignore_startup_parameters = options`) does.

It answers SSL/GSS encryption requests with 'N' (plain text, as PgBouncer without TLS), rewrites
the StartupMessage without the `options` parameter when `strip_options` is set, and then relays
bytes both ways. With `hold_from=n` it also parks the n-th and later connections (counting
from 0) until `release()`: a deterministic point between an export's first session and its
second (the Parquet reader's). `park(n)` holds the next message the client of the n-th
connection sends, until `release()`: a point inside an open, reused connection (e.g. between
an export's snapshot and the reused Parquet reader's first statement). With `latency_seconds`
it holds every message from the client that long before passing it on, so each round trip
costs what it would to a server on another machine (COPY data flowing back is not delayed).
Real sockets, real protocol; nothing of the project is replaced.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
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


def _relay(src: socket.socket, dst: socket.socket, latency_seconds: float = 0.0) -> None:
    with suppress(OSError):
        while data := src.recv(65536):
            if latency_seconds:
                time.sleep(latency_seconds)  # the network's delay, not synchronisation
            dst.sendall(data)
    with suppress(OSError):
        dst.shutdown(socket.SHUT_WR)


class _ParkingSocket(socket.socket):
    """The client's socket, as the relay to the server reads it: each message received is
    passed on only after `before_send()` returns (PgProxy.park)."""

    def __init__(self, sock: socket.socket, before_send: Callable[[], None]) -> None:
        super().__init__(sock.family, sock.type, sock.proto, fileno=sock.detach())
        self._before_send = before_send

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        data = super().recv(bufsize, flags)
        if data:
            self._before_send()
        return data


class PgProxy:
    def __init__(
        self,
        upstream_dsn: str,
        *,
        strip_options: bool,
        hold_from: int | None = None,
        latency_seconds: float = 0.0,
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
        self.latency_seconds = latency_seconds
        self._accepted = 0
        self.holding = threading.Event()  # a connection (or a message: park) is parked
        self._gate = threading.Event()
        self._park: set[int] = set()  # connections whose next message waits for the gate

    def park(self, index: int) -> None:
        """Hold the next message the client of connection `index` (from 0) sends until
        `release()`; `holding` is set once it is held."""
        self._gate.clear()
        self.holding.clear()
        self._park.add(index)

    def _parked(self, index: int) -> None:
        if index in self._park:
            self._park.discard(index)
            self.holding.set()
            self._gate.wait()

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
        client = _ParkingSocket(client, lambda: self._parked(index))
        self._sockets += [client, server]
        threading.Thread(target=_relay, args=(server, client), daemon=True).start()
        _relay(client, server, self.latency_seconds)

    def _accept(self) -> None:
        with suppress(OSError):
            while True:
                client, _ = self._listener.accept()
                index, self._accepted = self._accepted, self._accepted + 1
                threading.Thread(target=self._serve, args=(client, index), daemon=True).start()

    def close(self) -> None:
        self._gate.set()
        with suppress(OSError):  # wakes the accepting thread (a close alone does not)
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        for sock in self._sockets:
            with suppress(OSError):
                sock.close()

    @property
    def connections(self) -> int:
        """Connections accepted so far."""
        return self._accepted


@contextmanager
def pg_proxy(
    upstream_dsn: str,
    *,
    strip_options: bool = False,
    hold_from: int | None = None,
    latency_seconds: float = 0.0,
) -> Iterator[PgProxy]:
    proxy = PgProxy(
        upstream_dsn,
        strip_options=strip_options,
        hold_from=hold_from,
        latency_seconds=latency_seconds,
    )
    thread = threading.Thread(target=proxy._accept, daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        proxy.close()
        thread.join(timeout=5)
