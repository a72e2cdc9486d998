"""A cancel that lands while an export commits (issue 17, item 1): it either lands before the
commit (nothing is published and the upload is aborted) or waits until a materialization
records the object. Never an object under the final key that no materialization records.

Each test runs the real CLI, `python -m dagster asset materialize` (or `job execute` for a
range), in a child process on a fresh DAGSTER_HOME, against a real PostgreSQL and S3 over HTTP
(or a local folder), and cancels it with SIGTERM, as the UI's "Terminate" does to a run worker.
The cancel is placed deterministically (interrupt_points.py): the child stops at the point and
says so, the test sends SIGTERM, and a point on a commit thread goes on only once the step's
thread is handling the interrupt. Points, and what must follow:

- `withdraw`: the step withdraws the partition's manifest -> nothing (issue 17 also names a
  withdrawal after the commit: the batch has none now, manifests are withdrawn once, first);
- `after-create`: S3 has opened the export's multipart upload, the client has not returned its
  id yet -> nothing, and the upload is aborted all the same;
- `streaming`: the export is held mid-stream with a part uploaded -> nothing, upload aborted;
- `commit-thread-start`: the step's thread is still inside the pool's `submit`, starting the
  commit thread, which is already committing -> the commit is waited for and recorded;
- `before-complete`, `after-complete`: a commit thread is about to send, or has just had the
  answer to, CompleteMultipartUpload -> the commit is waited for and recorded;
- `link`: the step signs the committed object's download link -> recorded;
- `metadata`: every partition delivered, the step builds their metadata -> recorded;
- `after-rename` (local storage): a commit thread has renamed the file into place -> recorded;
- a range of 4 partitions (`dagster job execute` of exports_job with a range's tags),
  cancelled while the 3rd is held mid-stream and 2 are committed -> those 2 recorded (by
  materializations the IO manager logs), the other 2 not published.
"Recorded": the latest materialization of the partition holds the object's exact sha256,
size and uri. Every time the run ends failed or canceled (a cancel is not retried), and no
multipart upload is left open.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import dagster as dg
import psycopg
import pytest

from export_pipeline.dagster_private import ranged_run_tags
from export_pipeline.spec import Format
from export_pipeline_tests.dagster_processes import REPO_ROOT, stop_group, tail
from export_pipeline_tests.faults import interrupt_points
from export_pipeline_tests.faults.source import (
    PARTITION,
    add_customer_events,
    create_events,
    export_backends,
    held_first_rows_sql,
    hold,
    new_lock_key,
    spec_yaml,
    wait_until,
    waiting_lock_keys,
)
from export_pipeline_tests.harness import add_customers, recorded
from export_pipeline_tests.helpers import list_keys, pending_uploads
from export_pipeline_tests.services import scratch_database

pytestmark = pytest.mark.slow

DATASET = "held"
# Customer 1's March: about 20 MB of CSV, so two 16 MiB parts (the first one uploads while the
# export streams, the last one in the commit). Customers 2-5: 10 rows each.
ROWS = 100_000
STREAMING_HOLD_ROW = 95_000  # about 19 MB out: the first part is uploaded
SMALL_CUSTOMERS = ("2", "3", "4", "5")
REACH_SECONDS = 180  # the child starts, loads the code and exports up to the point
EXIT_SECONDS = 60  # from SIGTERM to the child's exit
RECORDED = "published and recorded"
NOTHING = "nothing published"
SITECUSTOMIZE = "from export_pipeline_tests.faults.interrupt_points import install\ninstall()\n"


@pytest.fixture(scope="module")
def source_dsn(pg_server: str) -> Iterator[str]:
    """The source, shared by this module's tests (they only read it)."""
    with scratch_database(pg_server, "cancel_commit") as dsn:
        create_events(dsn, ROWS)  # customer 1, and 10 rows of customer 2
        for customer in SMALL_CUSTOMERS[1:]:
            add_customer_events(dsn, int(customer), int(customer) * 10_000_000 + 1, 10)
        yield dsn


class Child:
    """A `dagster` CLI process on its own DAGSTER_HOME, with one interrupt point."""

    def __init__(
        self,
        tmp_path: Path,
        source_dsn: str,
        storage: dict[str, str],
        point: str | None,
        hold_row: int = 0,
        sql: str | None = None,
    ) -> None:
        self.lock_key = new_lock_key()
        spec = tmp_path / "exports.yaml"
        spec.write_text(spec_yaml({DATASET: Format.CSV}, hold_row, self.lock_key, sql))
        self.home = tmp_path / "dagster_home"
        self.home.mkdir()
        (self.home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
        shim = tmp_path / "shim"
        shim.mkdir()
        (shim / "sitecustomize.py").write_text(SITECUSTOMIZE)
        self.points = tmp_path / "points"
        self.points.mkdir()
        self.log = tmp_path / "child.log"
        self.point = point
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("EXPORT_", "DAGSTER_"))},
            "PYTHONPATH": os.pathsep.join([str(shim), str(REPO_ROOT)]),
            "DAGSTER_HOME": str(self.home),
            "EXPORT_SOURCE_DSN": source_dsn,
            "EXPORT_SPEC": str(spec),
            interrupt_points.FOLDER: str(self.points),
            **storage,
        }
        if point is not None:
            self.env[interrupt_points.POINT] = point
        with self.instance() as instance:
            add_customers(instance, ["1", *SMALL_CUSTOMERS])

    def instance(self) -> dg.DagsterInstance:
        return dg.DagsterInstance.from_config(str(self.home))

    def reached(self) -> str | None:
        """'<point> <thread name>' once the child is at its point."""
        path = self.points / interrupt_points.REACHED
        return path.read_text().strip() if path.exists() else None

    @contextmanager
    def running(self, args: list[str]) -> Iterator[subprocess.Popen[bytes]]:
        """`python -m dagster <args>`, stopped (with all it started) on exit."""
        with self.log.open("wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "dagster", *args],
                cwd=REPO_ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            yield proc
        finally:
            stop_group(proc)

    def alive(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.poll() is None, f"the child exited early:\n{tail(self.log)}"

    def terminate(self, proc: subprocess.Popen[bytes]) -> None:
        """SIGTERM, as the UI's Terminate; the child must end, failed, on its own."""
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=EXIT_SECONDS)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"the child did not end {EXIT_SECONDS}s after SIGTERM:\n{tail(self.log)}"
            ) from None
        assert proc.returncode != 0, tail(self.log)

    def cancel(self, args: list[str], ready: Callable[[], bool] | None = None) -> str | None:
        """Run `dagster <args>`, send SIGTERM once it is at its point (without one: once
        `ready()`), and wait for it to exit; the thread the point was reached on."""
        with self.running(args) as proc:

            def at_point() -> bool:
                self.alive(proc)
                return ready() if ready is not None else self.reached() is not None

            wait_until(f"the child to reach {self.point or 'the hold'}", REACH_SECONDS, at_point)
            self.terminate(proc)
        where = self.reached()
        return None if where is None else where.split(" ", 1)[1]

    def run_ended_cancelled(self, instance: dg.DagsterInstance) -> None:
        """One run, ended failed or canceled (not succeeded after a retry), its step failure
        naming the asset."""
        [run] = instance.get_runs()
        assert run.status in {dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}, (
            run.status,
            tail(self.log),
        )
        failures = [
            e.dagster_event.step_failure_data.error
            for e in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_FAILURE)
            if e.dagster_event is not None
        ]
        assert [
            f for f in failures if f and f"exports/{DATASET}" in f.message and "cancel" in f.message
        ], (failures, tail(self.log))
        retries = instance.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_UP_FOR_RETRY)
        assert retries == [], "the cancel was taken for a failure and retried"


def _key(partition: str) -> str:
    customer, month = partition.split("|")
    return f"exports/{customer}/{month[:7]}/{DATASET}.csv"


def _s3_outcome(instance: dg.DagsterInstance, s3_client: Any, bucket: str, partition: str) -> str:
    """NOTHING, or RECORDED (the latest materialization holds the object's sha256, size and
    uri); anything else fails."""
    key = _key(partition)
    metadata = recorded(instance, DATASET, partition)
    if key not in list_keys(s3_client, bucket):
        assert metadata is None, metadata
        return NOTHING
    body = s3_client.get_object(Bucket=bucket, Key=key)["Body"].read()
    assert metadata is not None, f"{key} is published, but no materialization records it"
    assert metadata["sha256"] == hashlib.sha256(body).hexdigest()
    assert metadata["size_bytes"] == len(body)
    assert metadata["uri"] == f"s3://{bucket}/{key}"
    return RECORDED


def _s3_env(endpoint: str, bucket: str) -> dict[str, str]:
    return {"EXPORT_S3_BUCKET": bucket, "EXPORT_S3_ENDPOINT_URL": endpoint}


MATERIALIZE = [
    "asset",
    "materialize",
    "-m",
    "export_pipeline.definitions",
    "--select",
    f"exports/{DATASET}",
    "--partition",
    PARTITION,
]


@pytest.mark.parametrize(
    ("point", "thread", "outcome"),
    [
        ("withdraw", "MainThread", NOTHING),
        ("after-create", "MainThread", NOTHING),
        ("commit-thread-start", "MainThread", RECORDED),
        ("before-complete", "export-commit", RECORDED),
        ("after-complete", "export-commit", RECORDED),
        ("link", "MainThread", RECORDED),
        ("metadata", "MainThread", RECORDED),
    ],
)
def test_s3_cancel_at_a_point_of_the_commit(
    point: str,
    thread: str,
    outcome: str,
    tmp_path: Path,
    source_dsn: str,
    s3_endpoint: str,
    bucket: str,
    s3_client: Any,
) -> None:
    child = Child(tmp_path, source_dsn, _s3_env(s3_endpoint, bucket), point)
    reached_on = child.cancel(MATERIALIZE)
    assert reached_on is not None and reached_on.startswith(thread)
    with child.instance() as instance:
        child.run_ended_cancelled(instance)
        assert _s3_outcome(instance, s3_client, bucket, PARTITION) == outcome
    assert pending_uploads(s3_client, bucket) == []


def test_s3_cancel_mid_stream_aborts_the_upload(
    tmp_path: Path, source_dsn: str, s3_endpoint: str, bucket: str, s3_client: Any
) -> None:
    child = Child(tmp_path, source_dsn, _s3_env(s3_endpoint, bucket), None, STREAMING_HOLD_ROW)
    dbname = str(psycopg.conninfo.conninfo_to_dict(source_dsn)["dbname"])

    def held_with_a_part_uploaded(admin: psycopg.Connection) -> bool:
        if not export_backends(admin, dbname, waiting=True):
            return False
        uploads = s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
        return any(
            s3_client.list_parts(Bucket=bucket, Key=u["Key"], UploadId=u["UploadId"]).get("Parts")
            for u in uploads
        )

    with hold(source_dsn, child.lock_key), psycopg.connect(source_dsn, autocommit=True) as admin:
        child.cancel(MATERIALIZE, ready=lambda: held_with_a_part_uploaded(admin))
        assert export_backends(admin, dbname) == []
    with child.instance() as instance:
        child.run_ended_cancelled(instance)
        assert _s3_outcome(instance, s3_client, bucket, PARTITION) == NOTHING
    assert pending_uploads(s3_client, bucket) == []


def test_local_cancel_just_after_the_rename(tmp_path: Path, source_dsn: str) -> None:
    storage = tmp_path / "storage"
    child = Child(tmp_path, source_dsn, {"EXPORT_STORAGE_DIR": str(storage)}, "after-rename")
    reached_on = child.cancel(MATERIALIZE)
    assert reached_on is not None and reached_on.startswith("export-commit")
    path = storage / _key(PARTITION)
    with child.instance() as instance:
        child.run_ended_cancelled(instance)
        metadata = recorded(instance, DATASET, PARTITION)
    assert path.exists(), "the rename happened before the cancel"
    body = path.read_bytes()
    assert metadata is not None, f"{path} is published, but no materialization records it"
    assert metadata["sha256"] == hashlib.sha256(body).hexdigest()
    assert metadata["size_bytes"] == len(body)
    assert metadata["uri"] == str(path)
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left


def test_ranged_run_cancelled_after_two_of_four_partitions(
    tmp_path: Path, source_dsn: str, s3_endpoint: str, bucket: str, s3_client: Any
) -> None:
    """Each export of the range holds at its first row until the test lets it through (in
    whatever order the step runs them): two are let through and commit, the third is held
    when the cancel lands, the fourth never started."""
    lock_key = new_lock_key()
    child = Child(
        tmp_path, source_dsn, _s3_env(s3_endpoint, bucket), None, sql=held_first_rows_sql(lock_key)
    )
    args = ["job", "execute", "-m", "export_pipeline.definitions", "-j", "exports_job"]
    first, last = (f"{c}|2025-03-01" for c in (SMALL_CUSTOMERS[0], SMALL_CUSTOMERS[-1]))
    args += ["--tags", json.dumps(ranged_run_tags(first, last))]
    delivered: list[str] = []
    with ExitStack() as stack:
        holds = {
            c: stack.enter_context(hold(source_dsn, lock_key + int(c))) for c in SMALL_CUSTOMERS
        }
        admin = stack.enter_context(psycopg.connect(source_dsn, autocommit=True))
        proc = stack.enter_context(child.running(args))

        def held_next() -> str | None:
            child.alive(proc)
            waiting = [str(k - lock_key) for k in waiting_lock_keys(admin)]
            held = [c for c in waiting if c in holds and c not in delivered]
            return held[0] if held else None

        for _ in range(2):
            customer = str(wait_until("an export to hold", REACH_SECONDS, held_next))
            holds[customer].release()
            delivered.append(customer)
            key = _key(f"{customer}|2025-03-01")
            wait_until(
                f"{key} to be committed",
                60,
                lambda key=key: key in list_keys(s3_client, bucket),
            )
        wait_until("the third export to hold", 60, held_next)
        child.terminate(proc)
    with child.instance() as instance:
        child.run_ended_cancelled(instance)
        outcomes = {
            c: _s3_outcome(instance, s3_client, bucket, f"{c}|2025-03-01") for c in SMALL_CUSTOMERS
        }
    assert outcomes == {c: RECORDED if c in delivered else NOTHING for c in SMALL_CUSTOMERS}
    assert pending_uploads(s3_client, bucket) == []
