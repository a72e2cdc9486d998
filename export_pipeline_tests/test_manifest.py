"""The delivery manifest in the engine: real PostgreSQL, S3 through the SigV4 proxy, a folder."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest

from export_pipeline.batch import BatchItem, claim_deliveries, export_batch
from export_pipeline.engine import ExportResult, ExportStream, Written, partition_stream
from export_pipeline.errors import ExportError
from export_pipeline.extract.connection import SourceConfig
from export_pipeline.extract.session import PartitionBusyError, SourceSession
from export_pipeline.manifest import ManifestEntry, write_manifest
from export_pipeline.partitions import Month, partition_key
from export_pipeline.progress import ExportMeter
from export_pipeline.retryable import is_transient
from export_pipeline.spec import (
    Compression,
    DatasetSpec,
    ExportSpec,
    Format,
    Relation,
    SpecError,
    parse_spec,
)
from export_pipeline.storage.keys import StorageConfigError
from export_pipeline.storage.local import LocalObjectStore
from export_pipeline.storage.s3 import MIN_PART_SIZE, S3Config, S3ObjectStore
from export_pipeline.storage.writer import ObjectWriter
from export_pipeline_tests.harness import export_one
from export_pipeline_tests.helpers import files_under, list_keys
from export_pipeline_tests.manifest_helpers import (
    check_delivery,
    manifest_entry,
    publish_order,
    read_bytes,
    recording_s3,
)
from export_pipeline_tests.request_counts import S3Requests
from export_pipeline_tests.sigv4_proxy import Faults

MARCH = Month(2025, 3)
FOLDER = "exports/2/2025-03"


@pytest.fixture
def recorded_s3(moto_url: str) -> Iterator[tuple[S3ObjectStore, S3Requests, str]]:
    with recording_s3(moto_url) as (store, log):
        yield store, log, store.config.bucket


def _deliver_all(
    source: SourceConfig | SourceSession, store: Any, spec: ExportSpec, customer: str = "2"
) -> list[ExportResult]:
    return [export_one(source, store, d, customer, MARCH) for d in spec.datasets.values()]


def _entries(results: list[ExportResult]) -> list[ManifestEntry]:
    return [manifest_entry(r) for r in results]


def test_manifest_is_written_after_every_file_and_success_after_it_on_s3(
    demo_source: SourceConfig,
    demo_spec: ExportSpec,
    recorded_s3: tuple[S3ObjectStore, S3Requests, str],
) -> None:
    """A run re-delivers a customer-month that has a complete delivery: it withdraws the old
    manifest (_SUCCESS first), writes every file, then the manifest, then _SUCCESS. On one
    source session (as a run) the withdrawal happens once, when the customer-month is claimed,
    and no export withdraws again after its commit: the partition lock rules out another
    manifest writer meanwhile."""
    store, log, bucket = recorded_s3
    write_manifest(store, "2", MARCH, _entries(_deliver_all(demo_source, store, demo_spec)))
    log.clear()
    with SourceSession(demo_source) as session:
        results = _deliver_all(session, store, demo_spec)
        exported = len(log.requests)
        delivery = write_manifest(store, "2", MARCH, _entries(results))
    # two PUTs and nothing else: writing an object lists no orphans (the batch did, once)
    assert [r.operation for r in log.requests[exported:]] == ["PutObject", "PutObject"]

    last_data, manifest_at, success_at, count = publish_order(
        log, bucket, {r.stored.key for r in results}, FOLDER
    )
    assert last_data < manifest_at < success_at == count - 1
    assert log.publishes(bucket) == [
        ("delete", f"{FOLDER}/_SUCCESS"),
        ("delete", f"{FOLDER}/manifest.json"),
        *[("write", r.stored.key) for r in results],
        ("write", f"{FOLDER}/manifest.json"),
        ("write", f"{FOLDER}/_SUCCESS"),
    ]

    manifest = check_delivery(store, FOLDER)
    assert read_bytes(store, f"{FOLDER}/_SUCCESS").decode() == delivery.manifest.sha256
    assert manifest == delivery.document
    assert (manifest["customer"], manifest["month"]) == ("2", "2025-03")
    assert sorted(manifest["datasets"]) == sorted(demo_spec.datasets)
    for result in results:
        entry = manifest["datasets"][result.dataset]
        assert entry["rows"] == result.rows > 0
        assert (entry["format"], entry["compression"]) == (
            result.format.value,
            result.compression.value,
        )
        assert entry["columns"] == [{"name": c.name, "type": c.pg_type} for c in result.columns]
        # S3 records a presigned link, so its expiry is listed (the link itself is not).
        assert result.link is not None
        assert entry["download_url_expires_at"] == result.link.expires_at.isoformat()
        assert entry["snapshot_at"] == result.snapshot_at.isoformat()  # type: ignore[union-attr]
    assert "X-Amz-Signature" not in read_bytes(store, f"{FOLDER}/manifest.json").decode()
    events = manifest["datasets"]["events"]
    assert {"name": "occurred_at", "type": "timestamptz"} in events["columns"]


def test_a_failed_re_export_withdraws_the_manifest_and_a_good_one_restores_it(
    demo_source: SourceConfig, demo_spec: ExportSpec, local_store: LocalObjectStore
) -> None:
    results = _deliver_all(demo_source, local_store, demo_spec)
    write_manifest(local_store, "2", MARCH, [manifest_entry(r) for r in results])
    before = check_delivery(local_store, FOLDER)

    broken = dataclasses.replace(
        demo_spec.datasets["orders"], time_column="no_such_column"
    )  # a permanent failure: the query references a missing column
    with pytest.raises(ExportError, match="no_such_column"):
        export_one(demo_source, local_store, broken, "2", MARCH)
    left = files_under(local_store.root)
    assert f"{FOLDER}/manifest.json" not in left and f"{FOLDER}/_SUCCESS" not in left
    # The files stay; only the claim that they form a complete delivery is gone.
    assert {r.stored.key for r in results} <= set(left)

    again = _deliver_all(demo_source, local_store, demo_spec)
    write_manifest(local_store, "2", MARCH, [manifest_entry(r) for r in again])
    after = check_delivery(local_store, FOLDER)
    assert after["created_at"] > before["created_at"]
    assert {n: d["sha256"] for n, d in after["datasets"].items()} == {
        r.dataset: r.stored.sha256 for r in again
    }


def test_no_other_run_can_write_the_manifest_while_an_export_holds_the_customer_month(
    demo_source: SourceConfig, demo_spec: ExportSpec, local_store: LocalObjectStore
) -> None:
    """Before, an export withdrew the manifest again after its commit, in case another run
    wrote one meanwhile. Now that cannot happen: while this export streams, another run's
    manifest step cannot claim the customer-month (it waits, then fails transient), and the
    old manifest is already withdrawn. Once this run's session closes, the other run can."""
    results = _deliver_all(demo_source, local_store, demo_spec)
    write_manifest(local_store, "2", MARCH, _entries(results))
    stream = partition_stream(demo_source, demo_spec.datasets["orders"], "2", MARCH)
    other = SourceSession(demo_source, lock_wait_seconds=0.2)
    seen: list[PartitionBusyError] = []

    @dataclasses.dataclass(frozen=True)
    class OtherRunMeanwhile(ExportStream):
        def write_to(
            self,
            writer: ObjectWriter,
            session: SourceSession | None = None,
            meter: ExportMeter | None = None,
        ) -> Written:
            left = files_under(local_store.root)
            assert f"{FOLDER}/manifest.json" not in left and f"{FOLDER}/_SUCCESS" not in left
            with pytest.raises(PartitionBusyError) as info:
                claim_deliveries(other, local_store, [("2", MARCH)])  # the other run's step
            seen.append(info.value)
            return super().write_to(writer, session, meter)

    content = OtherRunMeanwhile(
        **{f.name: getattr(stream, f.name) for f in dataclasses.fields(stream)}
    )
    with other, SourceSession(demo_source) as session:
        pk = partition_key("2", MARCH)
        result = export_batch(
            [BatchItem(pk, "2", MARCH, content)], local_store, "orders", session=session
        )
        assert list(result.delivered) == [pk] and not result.failed
        [busy] = seen
        assert busy.transient and "2|2025-03" in str(busy)
        session.close()
        claim_deliveries(other, local_store, [("2", MARCH)])  # now it can
        assert other.claimed == 1
    left = files_under(local_store.root)
    assert f"{FOLDER}/manifest.json" not in left and f"{FOLDER}/_SUCCESS" not in left
    assert result.delivered[pk].stored.key in left


def test_rewriting_the_manifest_never_leaves_a_marker_naming_another_one(
    demo_source: SourceConfig, demo_spec: ExportSpec, local_store: LocalObjectStore
) -> None:
    entries = _entries(_deliver_all(demo_source, local_store, demo_spec))
    first = write_manifest(local_store, "2", MARCH, entries, datetime(2026, 1, 1, tzinfo=UTC))
    second = write_manifest(local_store, "2", MARCH, entries, datetime(2026, 1, 2, tzinfo=UTC))
    assert first.manifest.sha256 != second.manifest.sha256
    assert read_bytes(local_store, f"{FOLDER}/_SUCCESS").decode() == second.manifest.sha256
    check_delivery(local_store, FOLDER)


@pytest.mark.parametrize("fmt", [Format.PARQUET, Format.CSV])
def test_snapshot_time_is_recorded_before_the_rows_are_read(
    scratch_dsn: str, local_store: LocalObjectStore, fmt: Format
) -> None:
    with psycopg.connect(scratch_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (customer_id int, at timestamptz, v text)")
        conn.execute("INSERT INTO t VALUES (1, '2025-03-05', 'a'), (1, '2025-03-06', 'b')")
        row = conn.execute("SELECT clock_timestamp()").fetchone()
        assert row is not None
        committed = row[0]
    dataset = DatasetSpec(
        "t",
        "customer_id",
        fmt,
        Compression.NONE,
        table=Relation(("public", "t")),
        time_column="at",
    )
    result = export_one(SourceConfig(scratch_dsn), local_store, dataset, "1", MARCH)
    finished = datetime.now(UTC)
    assert result.snapshot_at is not None and result.snapshot_at.tzinfo is not None
    assert committed <= result.snapshot_at <= finished
    assert result.rows == 2
    entry = manifest_entry(result).document()
    assert entry["snapshot_at"] == result.snapshot_at.isoformat()


def test_a_dataset_named_manifest_is_rejected() -> None:
    text = """
customers: {table: public.customers, key_column: id}
months: {start: "2025-01"}
datasets:
  manifest: {table: public.t, customer_column: c, time_column: at, format: json}
"""
    with pytest.raises(SpecError, match=r"datasets\.manifest: the name 'manifest' is reserved"):
        parse_spec(text)


def test_success_marker_is_the_manifests_sha256(
    demo_source: SourceConfig, demo_spec: ExportSpec, local_store: LocalObjectStore
) -> None:
    entries = _entries(_deliver_all(demo_source, local_store, demo_spec))
    delivery = write_manifest(local_store, "2", MARCH, entries)
    body = read_bytes(local_store, f"{FOLDER}/manifest.json")
    marker = read_bytes(local_store, f"{FOLDER}/_SUCCESS")
    assert marker == hashlib.sha256(body).hexdigest().encode() == delivery.manifest.sha256.encode()
    assert len(marker) == 64


def test_a_bucket_policy_without_delete_fails_the_export_clearly_before_writing(
    demo_source: SourceConfig,
    demo_spec: ExportSpec,
    s3_faults: tuple[str, Faults],
    bucket: str,
    s3_client: Any,
) -> None:
    url, faults = s3_faults
    # S3 answers a DeleteObjects without s3:DeleteObject with AccessDenied
    faults.fail_next("POST", "?delete", 1, status=403, code="AccessDenied")
    store = S3ObjectStore(S3Config(bucket=bucket, endpoint_url=url, part_size=MIN_PART_SIZE))
    with pytest.raises(StorageConfigError, match="needs s3:DeleteObject on its prefix") as info:
        export_one(demo_source, store, demo_spec.datasets["orders"], "2", MARCH)
    assert f"s3://{bucket}/{FOLDER}/_SUCCESS" in str(info.value)
    assert not is_transient(info.value)
    assert list_keys(s3_client, bucket) == []
