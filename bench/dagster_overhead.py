"""What Dagster adds on top of the engine, for one partition and for many small ones.

    python bench/dagster_overhead.py --dsn DSN [--small 100]

1. One customer-month of the reference `events` table into an S3 server on this machine
   (moto, over HTTP): the engine alone vs `dg.materialize` of the same partition.
2. `--small` partitions of 1,000 rows each (table `bench_small_events`, created here): the
   engine's time per partition vs a Dagster run per partition (in-process executor).
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable

import boto3
import dagster as dg
import psycopg
from moto.server import ThreadedMotoServer

from export_pipeline.defs.assets import build_export_asset
from export_pipeline.defs.partitions import build_export_partitions_def
from export_pipeline.engine import export_partition
from export_pipeline.io_managers.exports import (
    EXPORTS_IO_MANAGER_KEY,
    LocalExportIOManager,
    S3ExportIOManager,
)
from export_pipeline.partitions import Month
from export_pipeline.resources.s3 import ExportS3Resource
from export_pipeline.resources.source import PostgresSourceResource
from export_pipeline.spec import parse_spec

SPEC = """
customers: {table: public.events, key_column: customer_id}
months: {start: "2025-01"}
datasets:
  events: {table: public.events, customer_column: customer_id, time_column: occurred_at,
           format: parquet, compression: zstd}
  small: {table: public.bench_small_events, customer_column: customer_id,
          time_column: occurred_at, format: csv, compression: none}
"""


def timed(fn: Callable[[], object], rounds: int) -> float:
    walls = []
    for _ in range(rounds):
        started = time.perf_counter()
        fn()
        walls.append(time.perf_counter() - started)
    return statistics.median(walls)


def ensure_small(dsn: str, partitions: int) -> None:
    with psycopg.connect(dsn) as conn:
        conn.execute("DROP TABLE IF EXISTS bench_small_events")
        conn.execute("CREATE TABLE bench_small_events AS SELECT * FROM events WHERE false")
        conn.execute(
            "INSERT INTO bench_small_events (id, customer_id, occurred_at, event_type, amount,"
            " payload, tags, session_id, is_test)"
            " SELECT id, 1 + (id - 1) / 1000, timestamptz '2025-06-01Z' + id * interval '1 s',"
            " event_type, amount, payload, tags, session_id, is_test FROM events"
            " WHERE id <= %s",
            (partitions * 1000,),
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--small", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # Dagster's per-event DEBUG/INFO lines and moto's access log
    os.environ.update(
        AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1"
    )
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    bucket = f"bench-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
    spec = parse_spec(SPEC)
    ensure_small(args.dsn, args.small)
    pdef = build_export_partitions_def(spec.months_start)
    source = PostgresSourceResource(dsn=args.dsn)
    s3 = S3ExportIOManager(s3=ExportS3Resource(endpoint_url=endpoint), bucket=bucket)
    local = LocalExportIOManager(base_dir=tempfile.mkdtemp(prefix="bench-small-"))
    out = sys.stdout

    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("customers", [str(i) for i in range(1, args.small + 1)])

        def engine_one() -> None:
            export_partition(
                source.source_config(),
                s3.files().store,
                spec.datasets["events"],
                "7",
                Month(2025, 6),
            )

        events_asset = build_export_asset(spec.datasets["events"], pdef)

        def dagster_one() -> None:
            result = dg.materialize(
                [events_asset],
                instance=instance,
                resources={"source": source, EXPORTS_IO_MANAGER_KEY: s3},
                partition_key=dg.MultiPartitionKey({"customer": "7", "month": "2025-06-01"}),
            )
            assert result.success

        engine_s = timed(engine_one, args.rounds)
        dagster_s = timed(dagster_one, args.rounds)
        out.write(
            f"\none partition (customer 7, 2025-06, Parquet zstd) into S3 over HTTP, "
            f"median of {args.rounds}:\n"
            f"  engine alone {engine_s:6.3f} s | dagster materialize {dagster_s:6.3f} s | "
            f"Dagster adds {dagster_s - engine_s:6.3f} s\n"
        )

        small_asset = build_export_asset(spec.datasets["small"], pdef)
        keys = [str(i) for i in range(1, args.small + 1)]
        started = time.perf_counter()
        for key in keys:
            export_partition(
                source.source_config(),
                local.files().store,
                spec.datasets["small"],
                key,
                Month(2025, 6),
            )
        engine_small = (time.perf_counter() - started) / len(keys)
        started = time.perf_counter()
        for key in keys:
            result = dg.materialize(
                [small_asset],
                instance=instance,
                resources={"source": source, EXPORTS_IO_MANAGER_KEY: local},
                partition_key=dg.MultiPartitionKey({"customer": key, "month": "2025-06-01"}),
            )
            assert result.success
        dagster_small = (time.perf_counter() - started) / len(keys)
        out.write(
            f"{len(keys)} partitions of 1,000 rows (CSV, local storage), per partition:\n"
            f"  engine {engine_small * 1000:6.1f} ms | one Dagster run "
            f"{dagster_small * 1000:6.1f} ms | engine share "
            f"{engine_small / dagster_small:5.1%}\n"
        )
    server.stop()


if __name__ == "__main__":
    main()
