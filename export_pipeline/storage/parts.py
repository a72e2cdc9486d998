"""The multipart part-size schedule, and the upload memory limit it must respect.

S3 allows 10,000 parts per upload and 5 TiB per object, so parts must grow with the object:
5 TiB / 10,000 parts is about 525 MiB per part. Small parts keep small exports cheap in
memory; large parts are only needed for very large objects. The schedule:

- part `n` (0-based) is `base << (n // parts_per_step)` bytes, capped at `max_buffer_bytes // 2`
  (one part uploading while the next one fills, so reading never waits on every upload) and
  at S3's 5 GiB part maximum;
- parts in flight are limited by bytes, not only by count: a part is handed to the upload
  threads only if the parts still uploading, this part and the next part to fill fit in
  `max_buffer_bytes` (and at most `max_concurrency` parts upload at once). So concurrency
  shrinks as parts grow, and the writer never holds more than `max_buffer_bytes` of data.

A limit whose schedule cannot reach 5 TiB within 10,000 parts is refused when the
configuration is made, with the smallest limit that would (`minimum_buffer_bytes`).
"""

from __future__ import annotations

from dataclasses import dataclass

from export_pipeline.storage.keys import StorageConfigError

MIB = 1024 * 1024
MIN_PART_SIZE = 5 * MIB  # S3's smallest part (all but the last)
MAX_PART_SIZE = 5 * 1024 * MIB  # S3's largest part
MAX_PARTS = 10_000
MAX_OBJECT_SIZE = 5 * 1024 * 1024 * MIB  # 5 TiB

DEFAULT_PART_SIZE = 16 * MIB
DEFAULT_PARTS_PER_STEP = 500
DEFAULT_MAX_CONCURRENCY = 4
# The smallest limit that reaches 5 TiB with the defaults above is 1354 MiB (see
# docs/operations.md, "Upload memory"); 1.5 GiB leaves room.
DEFAULT_MAX_BUFFER_BYTES = 1536 * MIB


@dataclass(frozen=True)
class PartSchedule:
    base: int = DEFAULT_PART_SIZE
    parts_per_step: int = DEFAULT_PARTS_PER_STEP
    max_buffer_bytes: int = DEFAULT_MAX_BUFFER_BYTES
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY
    # The largest object the schedule must be able to hold: S3's limit, unless a deployment
    # knows its exports are smaller and wants a lower memory limit (tests do).
    max_object_bytes: int = MAX_OBJECT_SIZE

    @property
    def cap(self) -> int:
        """The largest part: half the limit (one uploads while one fills), at most 5 GiB."""
        return min(MAX_PART_SIZE, self.max_buffer_bytes // 2)

    def part_size(self, parts_so_far: int) -> int:
        """The size of part number `parts_so_far + 1`."""
        steps = parts_so_far // self.parts_per_step
        return self.cap if steps >= 40 else min(self.base << steps, self.cap)

    def parts_in_flight(self, size: int) -> int:
        """How many parts of `size` may upload at once while the next one fills."""
        return max(1, min(self.max_concurrency, self.max_buffer_bytes // size - 1))

    def reach(self, parts: int = MAX_PARTS) -> int:
        """The largest object `parts` parts can hold."""
        return sum(self.part_size(n) for n in range(parts))

    def check(self) -> PartSchedule:
        if self.base < MIN_PART_SIZE:
            raise StorageConfigError(f"part_size must be at least {MIN_PART_SIZE} bytes (5 MiB)")
        if self.parts_per_step < 1:
            raise StorageConfigError("parts_per_step must be at least 1")
        if self.max_concurrency < 1:
            raise StorageConfigError("max_concurrency must be at least 1")
        if not 0 < self.max_object_bytes <= MAX_OBJECT_SIZE:
            raise StorageConfigError("max_object_bytes must be between 1 byte and 5 TiB")
        if self.max_buffer_bytes < 2 * self.base or self.reach() < self.max_object_bytes:
            minimum = minimum_buffer_bytes(self.base, self.parts_per_step, self.max_object_bytes)
            raise StorageConfigError(
                f"the S3 upload memory limit (EXPORT_S3_MAX_BUFFER_BYTES / max_buffer_bytes) "
                f"of {self.max_buffer_bytes} bytes is too small: with {self.base}-byte parts "
                f"doubling every {self.parts_per_step} parts, 10,000 parts cannot reach "
                f"{_size(self.max_object_bytes)}; the minimum is {minimum} bytes "
                f"({minimum // MIB} MiB)"
            )
        return self


def _size(n: int) -> str:
    return "S3's 5 TiB object limit" if n == MAX_OBJECT_SIZE else f"{n} bytes"


def minimum_buffer_bytes(
    base: int, parts_per_step: int, max_object_bytes: int = MAX_OBJECT_SIZE
) -> int:
    """The smallest limit (a whole number of MiB) whose schedule reaches `max_object_bytes`."""

    def enough(limit: int) -> bool:
        schedule = PartSchedule(base, parts_per_step, limit)
        return limit >= 2 * base and schedule.reach() >= max_object_bytes

    low, high = 1, 2 * MAX_PART_SIZE // MIB  # in MiB: at 10 GiB every late part is 5 GiB
    if not enough(high * MIB):
        raise StorageConfigError(
            f"{base}-byte parts doubling every {parts_per_step} parts cannot reach "
            f"{_size(max_object_bytes)} at any memory limit: lower parts_per_step or raise "
            "part_size"
        )
    while low < high:
        middle = (low + high) // 2
        if enough(middle * MIB):
            high = middle
        else:
            low = middle + 1
    return low * MIB


def schedule_table(schedule: PartSchedule) -> list[tuple[str, int, int, int, int]]:
    """(parts, part size, cumulative size after them, parts in flight, buffer memory) per
    step of the schedule, up to 10,000 parts: the table in docs/operations.md."""
    rows: list[tuple[str, int, int, int, int]] = []
    total, first = 0, 0
    for n in range(MAX_PARTS):
        size = schedule.part_size(n)
        total += size
        if n + 1 == MAX_PARTS or schedule.part_size(n + 1) != size:
            flight = schedule.parts_in_flight(size)
            memory = min(schedule.max_buffer_bytes, (flight + 1) * size)
            rows.append((f"{first + 1}-{n + 1}", size, total, flight, memory))
            first = n + 1
    return rows
