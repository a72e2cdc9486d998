"""Export a range of partitions of one dataset: the engine behind a (ranged) Dagster step.

No Dagster here. `export_batch` takes the partitions' contents (lazy `ExportStream`s, or any
`FileContent`) and, in this order:
1. claims their customer-months: an advisory lock each on the source session
   (`SourceSession.claim`), held until the session closes, so no other run writes the same
   files or manifest meanwhile;
2. withdraws their delivery manifests (`_SUCCESS`, then `manifest.json`, in two batched
   requests; once per run and customer-month: `claim_deliveries`), so a delivery being
   replaced is never announced complete and a failed re-export leaves none;
3. aborts what killed writers of the batch's keys left (one listing of open uploads: no live
   writer can own one, the locks are held);
4. exports the partitions one after the other on the session: reading and encoding on this
   thread, the commit (an S3 PUT or CompleteMultipartUpload, a local rename) on a commit
   thread, so the next export reads while S3 answers. An object whose parts already upload
   (a large one) is committed before the next export starts, so upload memory stays that of
   one export; small ones wait in at most `commit_threads` commits (one part each);
5. retries in place: a transient failure puts the partition back, due after the retry delay,
   while the others go on; a permanent one is final at once. Nothing is exported twice.

Requests per partition of a batch of N (S3): the file's own (a PUT for a small one), plus 2 / N
for the withdrawal (for the first dataset of a run only) and about 1 / N for the listing; new
source sessions 1 / N (3 / N with Parquet: ADBC's own connect takes two), and none for the
run's later batches, which reuse the session.

Interrupts (a cancelled run raises in this thread): the export being read is aborted (nothing
of it is published), and every commit already started is waited for: it either published its
object, which is then in `result.delivered`, or failed. So a caller that records
`result.delivered` when `export_batch` raises records every object it published.
"""

from __future__ import annotations

import contextlib
import heapq
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_for
from dataclasses import dataclass, field, replace

from export_pipeline.engine import (
    ExportResult,
    ExportStream,
    FileContent,
    Written,
    export_key,
    object_headers,
)
from export_pipeline.errors import ExportError
from export_pipeline.extract.session import SourceSession, lock_key
from export_pipeline.manifest import withdraw_manifests
from export_pipeline.partitions import Month
from export_pipeline.progress import Estimate, ExportMeter, ProgressReporter
from export_pipeline.retryable import is_transient
from export_pipeline.storage.writer import ObjectStore, ObjectWriter, StoredObject

DEFAULT_COMMIT_THREADS = 8
_POLL_SECONDS = 0.1  # waits are sliced, so an interrupt is taken at once
LOCK_WAIT = "the customer-months another run is writing (their partition locks)"


@dataclass(frozen=True)
class ExportStreams:
    """What an export asset returns for its run's partitions: one lazy stream per partition
    key, and the run's source session that will read them and hold their partition locks.
    Nothing is opened or read until the IO manager writes them."""

    streams: Mapping[str, ExportStream]
    session: SourceSession | None = None


@dataclass(frozen=True)
class BatchItem:
    """One partition to export: its key, customer and month, and what to write."""

    partition: str
    customer: str
    month: Month
    content: FileContent
    estimate: Estimate | None = None  # rows expected, if the caller knows (progress)


@dataclass(frozen=True)
class PartitionFailure:
    """A partition that was not delivered, and why (after `attempts` tries)."""

    partition: str
    customer: str
    month: Month
    error: BaseException
    attempts: int

    @property
    def transient(self) -> bool:
        return is_transient(self.error)

    @property
    def message(self) -> str:
        error = self.error
        return str(error) if isinstance(error, ExportError) else f"{type(error).__name__}: {error}"


@dataclass
class BatchResult:
    """What a batch delivered and what failed, filled in as it goes (also when interrupted)."""

    delivered: dict[str, ExportResult] = field(default_factory=dict)
    failed: dict[str, PartitionFailure] = field(default_factory=dict)


@dataclass(frozen=True)
class Retries:
    """In-place retries of transient failures: at most `max_retries` more tries; `delay(n)`
    is the wait before the n-th retry (1-based)."""

    max_retries: int = 0
    delay: Callable[[int], float] = lambda attempt: 0.0


@dataclass
class _Commit:
    item: BatchItem
    attempt: int
    meter: ExportMeter | None


def claim_deliveries(
    session: SourceSession | None,
    store: ObjectStore,
    customer_months: Sequence[tuple[str, Month]],
) -> list[tuple[str, Month]]:
    """Before (re)writing any file of these customer-months: hold their partition locks on
    `session` (waiting for other runs that hold some; see `SourceSession.claim`), then withdraw
    their delivery manifests (`manifest.withdraw_manifests`: `_SUCCESS`, then `manifest.json`,
    two batched requests). A customer-month this session already held was withdrawn when it
    was claimed, and no manifest can have been written since, except by this run's own
    manifest step, which comes last: so only newly claimed ones are withdrawn, once per run.
    Without a session nothing is locked and everything is withdrawn. Returns the newly claimed
    customer-months (all of them without a session): another run may have written those until
    now."""
    if not customer_months:
        return []
    if session is None:
        withdraw_manifests(store, customer_months)
        return list(customer_months)
    keys = {lock_key(store.location, c, str(m)): (c, m) for c, m in customer_months}
    new = [
        keys[key] for key in sorted(session.claim({k: f"{c}|{m}" for k, (c, m) in keys.items()}))
    ]
    withdraw_manifests(store, new)
    return new


def export_batch(
    items: Sequence[BatchItem],
    store: ObjectStore,
    dataset: str,
    *,
    session: SourceSession | None = None,
    retries: Retries | None = None,
    reporter: ProgressReporter | None = None,
    sign_links: bool = True,
    commit_threads: int = DEFAULT_COMMIT_THREADS,
    log: Callable[[str], None] | None = None,
    result: BatchResult | None = None,
) -> BatchResult:
    """Export `items` (partitions of `dataset`) into `store`; see the module docstring.

    `session` reads the rows of every `ExportStream` and holds the partition locks (without
    one, each stream opens its own connection and nothing is locked). `result` is filled in as
    partitions are delivered or fail, and returned.
    """
    result = BatchResult() if result is None else result
    if not items:
        return result
    retries = retries or Retries()
    run = _Batch(items, store, dataset, session, retries, reporter, sign_links, log, result)
    run.prepare()
    with ThreadPoolExecutor(commit_threads, thread_name_prefix="export-commit") as pool:
        run.drain(pool, commit_threads)
    return result


class _Batch:
    def __init__(
        self,
        items: Sequence[BatchItem],
        store: ObjectStore,
        dataset: str,
        session: SourceSession | None,
        retries: Retries,
        reporter: ProgressReporter | None,
        sign_links: bool,
        log: Callable[[str], None] | None,
        result: BatchResult,
    ) -> None:
        self.items = {item.partition: item for item in items}
        self.store = store
        self.dataset = dataset
        self.session = session
        self.retries = retries
        self.reporter = reporter
        self.sign_links = sign_links
        self.log = log or (lambda message: None)
        self.result = result
        self.keys = {
            item.partition: export_key(
                store, dataset, item.customer, item.month, item.content.extension
            )
            for item in items
        }
        # (due, order, partition, attempt): every partition is due at once, in the given order
        self.queue: list[tuple[float, int, str, int]] = [
            (0.0, n, item.partition, 1) for n, item in enumerate(items)
        ]
        self.order = len(items)
        self.commits: dict[Future[ExportResult], _Commit] = {}
        self.relocks = 0  # the session's relocks when this batch last withdrew

    def prepare(self) -> None:
        items = list(self.items.values())
        with (
            self.reporter.waiting(LOCK_WAIT)
            if self.reporter is not None
            else contextlib.nullcontext()
        ):
            claim_deliveries(self.session, self.store, [(i.customer, i.month) for i in items])
        self.relocks = self.session.relocks if self.session is not None else 0
        self.store.remove_orphans(list(self.keys.values()))

    def recheck_locks(self) -> None:
        """The session lost its backend (and the locks with it) and took them again on a new
        one: another run may have delivered and announced some of these customer-months in
        between, so withdraw the batch's manifests again before publishing anything more."""
        if self.session is None or self.session.relocks == self.relocks:
            return
        self.relocks = self.session.relocks
        withdraw_manifests(self.store, [(i.customer, i.month) for i in self.items.values()])

    def drain(self, pool: ThreadPoolExecutor, limit: int) -> None:
        try:
            while self.queue or self.commits:
                self.collect(block=False)
                now = time.monotonic()
                if not self.queue and not self.commits:
                    break
                if self.queue and self.queue[0][0] <= now:
                    _, _, partition, attempt = heapq.heappop(self.queue)
                    self.start(pool, self.items[partition], attempt)
                    if len(self.commits) >= limit:
                        self.collect(block=True)
                elif self.commits:
                    self.collect(block=True, until=self.queue[0][0] if self.queue else None)
                else:
                    time.sleep(min(_POLL_SECONDS, max(0.0, self.queue[0][0] - now)))
        except BaseException:
            self.settle()
            raise

    def start(self, pool: ThreadPoolExecutor, item: BatchItem, attempt: int) -> None:
        """Read and encode one partition here; hand its commit to the pool."""
        key = self.keys[item.partition]
        meter = (
            self.reporter.meter(self.dataset, item.partition, item.estimate)
            if self.reporter is not None
            else None
        )
        started = time.perf_counter()
        # The commit's future is registered before the pool can start it, so an interrupt
        # anywhere here (even inside `submit`, while it starts a thread) either cancels a
        # commit not started (nothing is published) or leaves it to `settle`, which waits.
        future: Future[ExportResult] = Future()
        writer = self.store.open_writer(key, object_headers(item.content, key))
        try:
            self.commits[future] = _Commit(item, attempt, meter)
            content = item.content
            if isinstance(content, ExportStream):
                written = content.write_to(writer, self.session, meter)
            else:
                written = content.write_to(writer)
            self.recheck_locks()
            pool.submit(self.commit, future, item, writer, written, started)
        except BaseException as exc:
            if not future.cancel():  # its commit runs: settle() waits for it and records it
                raise
            self.commits.pop(future, None)
            writer.abort()
            if not isinstance(exc, Exception):
                raise
            self.failed(item, attempt, exc, meter)
            return
        if not writer.buffered_only:
            # Its parts are in flight: finish it before the next export fills another buffer.
            self.wait([future])

    def commit(
        self,
        future: Future[ExportResult],
        item: BatchItem,
        writer: ObjectWriter,
        written: Written,
        started: float,
    ) -> None:
        """On a commit thread: publish the object; `future` gets what was delivered (or the
        error). Nothing, if the step cancelled `future` first (it aborts the writer)."""
        if not future.set_running_or_notify_cancel():
            return
        try:
            try:
                stored = writer.commit()
            except BaseException:
                writer.abort()
                raise
            delivered = self._delivered(item, stored, written, started)
        except BaseException as exc:
            future.set_exception(exc)
        else:
            future.set_result(delivered)

    def _delivered(
        self, item: BatchItem, stored: StoredObject, written: Written, started: float
    ) -> ExportResult:
        return ExportResult(
            dataset=self.dataset,
            customer=item.customer,
            month=item.month,
            format=item.content.format,
            compression=item.content.compression,
            rows=written.rows,
            stored=stored,
            columns=written.columns,
            duration_seconds=time.perf_counter() - started,
            snapshot_at=written.snapshot_at,
        )

    def collect(self, block: bool, until: float | None = None) -> None:
        """Record finished commits; with `block`, wait (in short slices) for at least one, or
        until the monotonic instant `until`."""
        while True:
            done = [f for f in self.commits if f.done()]
            for future in done:
                self.record(future)
            if done or not block or not self.commits:
                return
            if until is not None and time.monotonic() >= until:
                return
            wait_for(list(self.commits), timeout=_POLL_SECONDS, return_when=FIRST_COMPLETED)

    def wait(self, futures: list[Future[ExportResult]]) -> None:
        while not all(f.done() for f in futures):
            wait_for(futures, timeout=_POLL_SECONDS)

    def record(self, future: Future[ExportResult]) -> None:
        # The commit leaves `commits` only once its outcome is in `result`: an interrupt
        # before that (e.g. while the link is signed) leaves it to settle() to record.
        commit = self.commits[future]
        error = future.exception()
        if error is not None:
            del self.commits[future]
            self.failed(commit.item, commit.attempt, error, commit.meter)
            return
        delivered = future.result()
        if self.sign_links:  # here, not on the commit thread: boto3 sessions are not
            delivered = self.signed(delivered)  # thread-safe
        self.result.delivered[commit.item.partition] = delivered
        del self.commits[future]
        if self.reporter is not None and commit.meter is not None:
            self.reporter.finished(commit.meter, delivered=True)

    def signed(self, delivered: ExportResult) -> ExportResult:
        """With a download link; without one (and a warning) if it cannot be signed: the
        object is published, and a link can be signed later (`export-pipeline link`)."""
        try:
            link = self.store.download_link(delivered.stored.key)
        except Exception as exc:
            self.log(f"{delivered.stored.uri}: no download link recorded: {exc}")
            return delivered
        return replace(delivered, link=link)

    def failed(
        self, item: BatchItem, attempt: int, error: BaseException, meter: ExportMeter | None
    ) -> None:
        final = not is_transient(error) or attempt > self.retries.max_retries
        if self.reporter is not None and meter is not None:
            self.reporter.finished(meter, delivered=None if not final else False)
        if final:
            self.result.failed[item.partition] = PartitionFailure(
                item.partition, item.customer, item.month, error, attempt
            )
            return
        delay = max(0.0, float(self.retries.delay(attempt)))
        self.order += 1
        heapq.heappush(
            self.queue, (time.monotonic() + delay, self.order, item.partition, attempt + 1)
        )
        what = PartitionFailure(item.partition, item.customer, item.month, error, attempt)
        self.log(
            f"{self.dataset} {item.partition}: {what.message}; try {attempt + 1} of "
            f"{self.retries.max_retries + 1} in {delay:.0f}s"
        )

    def settle(self) -> None:
        """After an interrupt: wait for every commit already started (however often
        interrupted again) and record it; an object published is in `result.delivered`."""
        interrupted: BaseException | None = None
        while self.commits:
            try:
                self.wait(list(self.commits))
                for future in list(self.commits):
                    self.record(future)
            except BaseException as exc:  # another interrupt: keep waiting, raise it after
                interrupted = interrupted or exc
        if interrupted is not None:
            raise interrupted
