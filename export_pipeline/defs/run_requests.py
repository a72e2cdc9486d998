"""Ranged run requests of the export assets: what the schedule and the sensors launch.

A month for 1,000 customers is not 1,000 runs: customers (in their partition order, so each
slice is a contiguous range) and months are cut into ranges of at most
`MAX_PARTITIONS_PER_RUN` partitions, as the backfill policy cuts a UI backfill, and each range
is one run of `exports_job` with a stable run key.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TypeVar

import dagster as dg

from export_pipeline.dagster_private import ranged_run_tags
from export_pipeline.defs.assets import MAX_PARTITIONS_PER_RUN
from export_pipeline.partitions import Month, partition_key

T = TypeVar("T")


def ranged_run_requests(
    customers: Sequence[str],
    months: Sequence[Month],
    run_key: str,
    tags: Mapping[str, str],
    limit: int = MAX_PARTITIONS_PER_RUN,
) -> list[dg.RunRequest]:
    """Runs covering `customers` x `months` (both in partition order), each a product range of
    at most `limit` partitions; run keys `<run_key>-<n>`."""
    requests: list[dg.RunRequest] = []
    for month_slice in _slices(months, limit):
        per_run = max(1, limit // len(month_slice))
        for customer_slice in _slices(customers, per_run):
            requests.append(
                dg.RunRequest(
                    run_key=f"{run_key}-{len(requests)}",
                    tags={
                        **tags,
                        **ranged_run_tags(
                            partition_key(customer_slice[0], month_slice[0]),
                            partition_key(customer_slice[-1], month_slice[-1]),
                        ),
                    },
                )
            )
    return requests


def _slices(items: Sequence[T], size: int) -> list[Sequence[T]]:
    return [items[i : i + size] for i in range(0, len(items), size)]
