"""`batch.export_batch`, the engine behind a ranged step: several partitions of one dataset on
one source session, into S3 through a proxy that checks SigV4 and records every request (real
PostgreSQL, moto's server, botocore's own event hooks to hold a request at a chosen point).

Proven here: what a batch costs in requests (one listing of open uploads, two withdrawals, one
PUT per small file, whatever the number of partitions); that one partition's permanent failure
costs the others nothing; that a transient failure is retried in place without exporting the
others again; and that an interrupt leaves every commit already started either published and
recorded in the result, or not published.
"""

from __future__ import annotations

import dataclasses
import hashlib
import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from export_pipeline.batch import (
    BatchItem,
    BatchResult,
    Retries,
    claim_deliveries,
    export_batch,
)
from export_pipeline.engine import ExportStream, Written, partition_stream, write_object
from export_pipeline.extract.connection import SourceConfig
from export_pipeline.extract.session import SourceSession
from export_pipeline.manifest import BytesContent
from export_pipeline.partitions import Month, partition_key
from export_pipeline.progress import ExportMeter, ProgressReporter
from export_pipeline.spec import Compression, DatasetSpec, ExportSpec, Format
from export_pipeline.storage.keys import manifest_key, success_key
from export_pipeline.storage.s3 import S3ObjectStore
from export_pipeline.storage.writer import ObjectWriter
from export_pipeline_tests.harness import export_many
from export_pipeline_tests.helpers import list_keys, pending_uploads
from export_pipeline_tests.manifest_helpers import read_bytes, recording_s3
from export_pipeline_tests.request_counts import S3Requests
from export_pipeline_tests.sigv4_proxy import Faults

MARCH = Month(2025, 3)
CUSTOMERS = ["1", "2", "3", "4", "5"]
PARTITIONS = [(c, MARCH) for c in CUSTOMERS]


def _pk(customer: str) -> str:
    return partition_key(customer, MARCH)


def _key(customer: str, dataset: str = "orders", ext: str = "jsonl") -> str:
    return f"exports/{customer}/2025-03/{dataset}.{ext}"


@pytest.fixture
def recorded(moto_url: str) -> Iterator[tuple[S3ObjectStore, S3Requests, Faults]]:
    """A bucket behind a recording endpoint that can also inject faults; botocore tries each
    request once, so an injected 5xx reaches the engine."""
    with recording_s3(moto_url, max_attempts=1) as (store, log):
        yield store, log, log


@pytest.fixture
def session(demo_source: SourceConfig) -> Iterator[SourceSession]:
    with SourceSession(demo_source) as session:
        yield session


def _old_delivery(store: S3ObjectStore, customers: list[str]) -> set[str]:
    """A manifest and _SUCCESS left by an earlier delivery of each customer-month."""
    keys = set()
    for customer in customers:
        for key in (
            manifest_key("exports", customer, MARCH),
            success_key("exports", customer, MARCH),
        ):
            write_object(BytesContent(b"{}", "application/json"), store, key)
            keys.add(key)
    return keys


def _check_stored(store: S3ObjectStore, result: BatchResult) -> None:
    for delivered in result.delivered.values():
        data = read_bytes(store, delivered.stored.key)
        assert hashlib.sha256(data).hexdigest() == delivered.stored.sha256
        assert len(data) == delivered.stored.size_bytes


def _source_rows(dsn: str) -> dict[str, int]:
    """Orders per customer in March, as the source counts them."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT customer_id::text, count(*) FROM orders"
            " WHERE ordered_at >= '2025-03-01' AND ordered_at < '2025-04-01' GROUP BY 1"
        ).fetchall()
    return {_pk(customer): count for customer, count in rows}


def test_a_batch_costs_one_listing_two_withdrawals_and_one_put_per_file(
    demo_dsn: str,
    demo_spec: ExportSpec,
    recorded: tuple[S3ObjectStore, S3Requests, Faults],
    session: SourceSession,
) -> None:
    store, log, _ = recorded
    old = _old_delivery(store, ["1", "4"])
    log.clear()
    result = export_many(session, store, demo_spec.datasets["orders"], PARTITIONS)
    assert sorted(result.delivered) == [_pk(c) for c in CUSTOMERS] and not result.failed
    assert log.counts() == {"DeleteObjects": 2, "ListMultipartUploads": 1, "PutObject": 5}
    successes, manifests = log.of("DeleteObjects")
    assert successes.deleted == tuple(success_key("exports", c, MARCH) for c in CUSTOMERS)
    assert manifests.deleted == tuple(manifest_key("exports", c, MARCH) for c in CUSTOMERS)
    [listing] = log.of("ListMultipartUploads")
    assert "prefix=exports%2F" in listing.target  # under the keys' common prefix
    steps = log.publishes(store.config.bucket)
    assert [op for op, _ in steps] == ["delete"] * 10 + ["write"] * 5  # withdrawn first
    assert {key for op, key in steps if op == "write"} == {_key(c) for c in CUSTOMERS}
    assert not old & set(list_keys(store.client, store.config.bucket))
    _check_stored(store, result)
    assert {pk: r.rows for pk, r in result.delivered.items()} == _source_rows(demo_dsn)
    assert all(r.link is not None for r in result.delivered.values())
    assert session.connects == 1  # one backend for the whole batch

    # The run's next dataset on the same session: the customer-months are claimed and
    # withdrawn already, so only its own listing and files.
    log.clear()
    invoices = export_many(session, store, demo_spec.datasets["invoices"], PARTITIONS)
    assert len(invoices.delivered) == 5 and not invoices.failed
    assert log.counts() == {"ListMultipartUploads": 1, "PutObject": 5}
    assert session.connects == 1


# customer 3's rows divide by zero: a permanent failure of that partition only
BROKEN = DatasetSpec(
    "orders",
    "customer_id",
    Format.JSONL,
    Compression.NONE,
    sql="SELECT o.id, o.customer_id, 1 / (o.customer_id - 3) AS ratio FROM public.orders AS o"
    " WHERE o.customer_id = %(customer)s"
    " AND o.ordered_at >= %(month_start)s AND o.ordered_at < %(month_end)s",
)


def test_a_permanent_failure_costs_the_other_partitions_nothing(
    recorded: tuple[S3ObjectStore, S3Requests, Faults], session: SourceSession
) -> None:
    store, log, _ = recorded
    old = _old_delivery(store, CUSTOMERS)
    log.clear()
    reporter = ProgressReporter(lambda report: None, total=5)  # counts only: never started
    items = [
        BatchItem(_pk(c), c, m, partition_stream(session.config, BROKEN, c, m))
        for c, m in PARTITIONS
    ]
    result = export_batch(
        items, store, "orders", session=session, retries=Retries(2), reporter=reporter
    )
    assert sorted(result.delivered) == [_pk(c) for c in CUSTOMERS if c != "3"]
    [failure] = result.failed.values()
    assert (failure.partition, failure.customer, failure.month) == (_pk("3"), "3", MARCH)
    assert failure.attempts == 1 and not failure.transient  # permanent: never tried again
    assert "division by zero" in failure.message and "'orders'" in failure.message
    bucket = store.config.bucket
    assert list_keys(store.client, bucket) == sorted(_key(c) for c in CUSTOMERS if c != "3")
    assert pending_uploads(store.client, bucket) == []
    assert not old & set(list_keys(store.client, bucket))  # every manifest withdrawn, 3's too
    assert log.counts()["PutObject"] == 4  # nothing of 3's was sent
    _check_stored(store, result)
    batch = reporter.report().batch
    assert batch is not None and (batch.done, batch.failed, batch.total) == (4, 1, 5)
    assert session.connects == 1  # the failed query did not cost the session its backend


def test_a_transient_failure_is_retried_in_place_without_exporting_the_others_again(
    demo_spec: ExportSpec,
    recorded: tuple[S3ObjectStore, S3Requests, Faults],
    session: SourceSession,
) -> None:
    store, log, faults = recorded
    faults.fail_next("PUT", f"/{_key('2')}", 1, 503, "SlowDown")  # the first PUT of customer 2
    messages: list[str] = []
    reporter = ProgressReporter(lambda report: None, total=5)
    result = export_batch(
        [
            BatchItem(
                _pk(c), c, m, partition_stream(session.config, demo_spec.datasets["orders"], c, m)
            )
            for c, m in PARTITIONS
        ],
        store,
        "orders",
        session=session,
        retries=Retries(2, lambda attempt: 0.05 * attempt),
        reporter=reporter,
        log=messages.append,
    )
    assert sorted(result.delivered) == [_pk(c) for c in CUSTOMERS] and not result.failed
    assert faults.injected == 1
    puts = Counter(r.key for r in log.of("PutObject"))
    assert puts == {**{_key(c): 1 for c in CUSTOMERS}, _key("2"): 2}  # only 2's again
    [message] = messages
    assert message.startswith(f"orders {_pk('2')}: ") and "SlowDown" in message
    assert message.endswith("try 2 of 3 in 0s")
    _check_stored(store, result)
    batch = reporter.report().batch
    assert batch is not None and (batch.done, batch.failed) == (5, 0)
    assert session.connects == 1


# -- interrupts ---------------------------------------------------------------------------
HOLD_POINTS = {
    "before the PUT is sent": ("before-send.s3.PutObject", None),
    "after S3 answered the PUT": ("after-call.s3.PutObject", None),
    "a PUT that fails": ("before-send.s3.PutObject", 503),
}


@pytest.mark.parametrize("point", list(HOLD_POINTS))
def test_an_interrupt_leaves_every_started_commit_published_and_recorded_or_not_published(
    point: str,
    demo_spec: ExportSpec,
    recorded: tuple[S3ObjectStore, S3Requests, Faults],
    session: SourceSession,
) -> None:
    """Partition 1's commit (its PUT, on a commit thread) is held at `point` while partition 2
    is read; then partition 2's export is interrupted (a cancelled run's KeyboardInterrupt),
    and the held commit goes on. The batch raises the interrupt only after that commit ended,
    with its outcome recorded: published and in `result.delivered`, or failed and not
    published. Partition 3 never starts."""
    store, _, faults = recorded
    event, status = HOLD_POINTS[point]
    if status is not None:
        faults.fail_next("PUT", f"/{_key('1')}", 1, status, "SlowDown")
    held, go_on = threading.Event(), threading.Event()

    def hold(**kwargs: Any) -> None:
        request = kwargs.get("request")
        url = request.url if request is not None else kwargs["context"].get("held_url", "")
        if url.split("?")[0].endswith(_key("1")):
            held.set()
            assert go_on.wait(30)

    def remember(params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        context["held_url"] = f"/{params['Key']}"  # after-call has no request to look at

    store.client.meta.events.register("before-parameter-build.s3.PutObject", remember)
    store.client.meta.events.register(event, hold)
    dataset = demo_spec.datasets["orders"]
    stream = partition_stream(session.config, dataset, "2", MARCH)

    @dataclasses.dataclass(frozen=True)
    class Interrupted(ExportStream):
        def write_to(
            self,
            writer: ObjectWriter,
            session: SourceSession | None = None,
            meter: ExportMeter | None = None,
        ) -> Written:
            super().write_to(writer, session, meter)  # every row read
            assert held.wait(30)  # partition 1's commit is in flight
            go_on.set()
            raise KeyboardInterrupt

    interrupted = Interrupted(
        **{f.name: getattr(stream, f.name) for f in dataclasses.fields(stream)}
    )
    items = [
        BatchItem(_pk("1"), "1", MARCH, partition_stream(session.config, dataset, "1", MARCH)),
        BatchItem(_pk("2"), "2", MARCH, interrupted),
        BatchItem(_pk("3"), "3", MARCH, partition_stream(session.config, dataset, "3", MARCH)),
    ]
    result = BatchResult()
    with pytest.raises(KeyboardInterrupt):
        export_batch(items, store, "orders", session=session, result=result)
    bucket = store.config.bucket
    published = set(list_keys(store.client, bucket))
    for customer in ("1", "2", "3"):  # published exactly when recorded as delivered
        assert (_key(customer) in published) == (_pk(customer) in result.delivered), customer
    if status is None:
        assert list(result.delivered) == [_pk("1")] and not result.failed
        _check_stored(store, result)
    else:
        assert not result.delivered and list(result.failed) == [_pk("1")]
        assert result.failed[_pk("1")].transient
    assert published == ({_key("1")} if status is None else set())
    assert pending_uploads(store.client, bucket) == []


def test_after_the_session_lost_its_locks_the_batch_withdraws_again_before_publishing(
    demo_spec: ExportSpec,
    demo_dsn: str,
    recorded: tuple[S3ObjectStore, S3Requests, Faults],
    session: SourceSession,
) -> None:
    """Between two exports of a batch the session's backend ends, and with it its partition
    locks; another run takes customer 2's month meanwhile and announces a delivery of it. The
    batch's next export reconnects and takes the locks again: before it publishes anything,
    that announcement is withdrawn, as it would no longer describe the files."""
    store, _, _ = recorded
    dataset = demo_spec.datasets["orders"]
    config = session.config

    @dataclasses.dataclass(frozen=True)
    class Gap(ExportStream):
        def write_to(
            self,
            writer: ObjectWriter,
            session: SourceSession | None = None,
            meter: ExportMeter | None = None,
        ) -> Written:
            assert session is not None
            written = super().write_to(writer, session, meter)
            pid = session.connection().info.backend_pid
            with psycopg.connect(demo_dsn, autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
            with SourceSession(config, lock_wait_seconds=10) as other:  # the other run
                claim_deliveries(other, store, [("2", MARCH)])  # free now: waits for nobody
                _old_delivery(store, ["2"])
            return written

    first = partition_stream(config, dataset, "1", MARCH)
    gap = Gap(**{f.name: getattr(first, f.name) for f in dataclasses.fields(first)})
    items = [
        BatchItem(_pk("1"), "1", MARCH, gap),
        BatchItem(_pk("2"), "2", MARCH, partition_stream(config, dataset, "2", MARCH)),
    ]
    result = export_batch(items, store, "orders", session=session)
    assert sorted(result.delivered) == [_pk("1"), _pk("2")] and not result.failed
    assert session.relocks == 1 and session.claimed == 2  # locks taken again, once
    keys = set(list_keys(store.client, store.config.bucket))
    assert manifest_key("exports", "2", MARCH) not in keys
    assert success_key("exports", "2", MARCH) not in keys
