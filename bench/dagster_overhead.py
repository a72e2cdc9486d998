"""What Dagster adds on top of the engine, for one partition and for many small ones.

    python bench/dagster_overhead.py --dsn DSN [--small 100]

1. One customer-month of the reference `events` table into an S3 server on this machine
   (moto, over HTTP): the engine alone (`harness.export_one`: withdrawal, orphan listing,
   export, commit, on a session of its own) vs a run of `exports_job` for that partition
   (in process).
2. `--small` partitions of 1,000 rows each (table `bench_small_events`, created here), local
   storage: the engine's time per partition (a new session each) vs a Dagster run per
   partition; and the way runs go since one-path, the whole range at once: the engine on one
   session (`harness.export_many`) vs one ranged run of `exports_job`.
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
from pathlib import Path

import boto3
import dagster as dg
import psycopg
from moto.server import ThreadedMotoServer

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]

from export_pipeline.extract.session import SourceSession  # noqa: E402
from export_pipeline.io_managers.metadata import export_asset_key  # noqa: E402
from export_pipeline.partitions import Month, partition_key  # noqa: E402
from export_pipeline.spec import parse_spec  # noqa: E402
from export_pipeline_tests.harness import (  # noqa: E402
    add_customers,
    export_definitions,
    export_many,
    export_one,
    export_resources,
    local_storage,
    materialize,
    s3_storage,
)

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
    s3 = s3_storage(endpoint, bucket)
    local = local_storage(tempfile.mkdtemp(prefix="bench-small-"))
    s3_resources = export_resources(args.dsn, s3)
    s3_defs = export_definitions(
        spec, s3_resources, retry_policy=None, checks=False, manifest=False
    )
    local_defs = export_definitions(
        spec, export_resources(args.dsn, local), retry_policy=None, checks=False, manifest=False
    )
    source = s3_resources["source"].source_config()
    month = Month(2025, 6)
    out = sys.stdout

    with dg.instance_for_test() as instance:
        keys = [str(i) for i in range(1, args.small + 1)]
        add_customers(instance, keys if "7" in keys else [*keys, "7"])

        def engine_one() -> None:
            export_one(source, s3.store(), spec.datasets["events"], "7", month)

        def dagster_one() -> None:
            result = materialize(
                instance, s3_defs, partition_key("7", month), [export_asset_key("events")]
            )
            assert result.success

        engine_s = timed(engine_one, args.rounds)
        dagster_s = timed(dagster_one, args.rounds)
        out.write(
            f"\none partition (customer 7, 2025-06, Parquet zstd) into S3 over HTTP, "
            f"median of {args.rounds}:\n"
            f"  engine alone {engine_s:6.3f} s | dagster run {dagster_s:6.3f} s | "
            f"Dagster adds {dagster_s - engine_s:6.3f} s\n"
        )

        small, small_key = spec.datasets["small"], export_asset_key("small")
        started = time.perf_counter()
        for key in keys:
            export_one(source, local.store(), small, key, month)
        engine_small = (time.perf_counter() - started) / len(keys)
        started = time.perf_counter()
        for key in keys:
            result = materialize(instance, local_defs, partition_key(key, month), [small_key])
            assert result.success
        dagster_small = (time.perf_counter() - started) / len(keys)
        started = time.perf_counter()
        with SourceSession(source) as session:
            batch = export_many(session, local.store(), small, [(key, month) for key in keys])
        assert not batch.failed and len(batch.delivered) == len(keys), batch.failed
        engine_range = (time.perf_counter() - started) / len(keys)
        started = time.perf_counter()
        first, last = partition_key(keys[0], month), partition_key(keys[-1], month)
        result = materialize(instance, local_defs, (first, last), [small_key])
        assert result.success
        dagster_range = (time.perf_counter() - started) / len(keys)
        out.write(
            f"{len(keys)} partitions of 1,000 rows (CSV, local storage), per partition:\n"
            f"  engine {engine_small * 1000:6.1f} ms | one Dagster run "
            f"{dagster_small * 1000:6.1f} ms | engine share "
            f"{engine_small / dagster_small:5.1%}\n"
            f"  all {len(keys)} at once: engine on one session {engine_range * 1000:6.1f} ms | "
            f"one ranged Dagster run {dagster_range * 1000:6.1f} ms | engine share "
            f"{engine_range / dagster_range:5.1%}\n"
        )
    server.stop()


if __name__ == "__main__":
    main()
