"""Aborting a multipart upload does not wait for part uploads that hang (issue 8, item 2).

A TCP relay in front of the S3 endpoint holds every UploadPart request without answering (an S3
that stopped responding mid-upload); everything else passes through. The writer has two parts
in flight when the export fails: the abort waits `abort_wait_seconds` for them, no longer, then
aborts the upload on the server, which leaves nothing open and nothing under the key.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any
from urllib.parse import urlsplit

import pytest

from export_pipeline.storage.s3 import MIN_PART_SIZE, S3Config, S3ObjectStore
from export_pipeline.storage.writer import ObjectHeaders
from export_pipeline_tests.helpers import list_keys, pending_uploads

KEY = "exports/1/2025-03/hung.csv"
WAIT = 1.0  # the bound under test (S3Config.abort_wait_seconds; 5 s by default)


class PartHangingRelay:
    def __init__(self, upstream: str) -> None:
        split = urlsplit(upstream)
        self._upstream = (split.hostname or "127.0.0.1", split.port or 80)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self.held = 0
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []

    def _pipe(self, src: socket.socket, dst: socket.socket, inspect: bool) -> None:
        with suppress(OSError):
            while data := src.recv(65536):
                if (
                    inspect
                    and data.startswith(b"PUT ")
                    and b"partNumber=" in data.split(b"\r\n")[0]
                ):
                    with self._lock:
                        self.held += 1
                    return  # never forwarded, never answered: the request hangs
                dst.sendall(data)

    def _serve(self, client: socket.socket) -> None:
        server = socket.create_connection(self._upstream)
        self._sockets += [client, server]
        threading.Thread(target=self._pipe, args=(server, client, False), daemon=True).start()
        self._pipe(client, server, True)

    def run(self) -> None:
        with suppress(OSError):
            while True:
                client, _ = self._listener.accept()
                threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def close(self) -> None:
        self._listener.close()
        for sock in self._sockets:
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
                sock.close()


@contextmanager
def part_hanging_relay(upstream: str) -> Iterator[PartHangingRelay]:
    relay = PartHangingRelay(upstream)
    threading.Thread(target=relay.run, daemon=True).start()
    try:
        yield relay
    finally:
        relay.close()


def test_abort_waits_a_bounded_time_for_hung_parts(
    s3_endpoint: str, bucket: str, s3_client: Any
) -> None:
    with part_hanging_relay(s3_endpoint) as relay:
        store = S3ObjectStore(
            S3Config(
                bucket=bucket,
                endpoint_url=relay.url,
                part_size=MIN_PART_SIZE,
                abort_wait_seconds=WAIT,
            )
        )
        writer = store.open_writer(KEY, ObjectHeaders("text/csv", "hung.csv"))
        with pytest.raises(RuntimeError, match="the export failed"), writer:
            writer.write(os.urandom(2 * MIN_PART_SIZE + 1))  # two parts go out and hang
            deadline = time.monotonic() + 30
            while relay.held < 2:  # polling a condition with a deadline
                assert time.monotonic() < deadline, "the parts never reached the relay"
                time.sleep(0.05)
            failed = time.monotonic()
            raise RuntimeError("the export failed")
        aborted_in = time.monotonic() - failed
        assert pending_uploads(s3_client, bucket) == []
        assert list_keys(s3_client, bucket) == []
    assert WAIT <= aborted_in < WAIT + 5
