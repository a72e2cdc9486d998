"""`export-pipeline link CUSTOMER MONTH DATASET [--ttl SECONDS]`: a fresh download link for a
finished export, signed now, without exporting again.

The latest materialization of the partition says which file was delivered; the export IO
storage configured by the EXPORT_* variables (as the code location builds it) checks the object
is still there at the recorded size and presigns a GET (`resources/links.delivered_file`).
Local storage has no links: the file's path is printed instead (exit 0), with a note on stderr.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from datetime import datetime

import dagster as dg

from export_pipeline.cli.common import (
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_USAGE,
    CliError,
    Target,
    check_datasets,
    check_month,
    parse_month,
)
from export_pipeline.cli.context import check_customer, open_instance, read_spec
from export_pipeline.cli.output import print_json
from export_pipeline.io_managers.metadata import export_asset_key, latest_metadata, recorded_file
from export_pipeline.resources.links import configured_storage
from export_pipeline.resources.storage import EXPORT_STORAGE_KEY, LocalExportStorageResource
from export_pipeline.settings import export_storage
from export_pipeline.storage.s3 import MAX_LINK_TTL_SECONDS


@dataclass(frozen=True)
class FreshLink:
    """A signed link (S3), or the file's path where storage is local (`url` None)."""

    uri: str
    url: str | None
    expires_at: datetime | None


def command(args: argparse.Namespace) -> int:
    if args.ttl is not None and not 1 <= args.ttl <= MAX_LINK_TTL_SECONDS:
        raise CliError(
            f"--ttl must be between 1 and {MAX_LINK_TTL_SECONDS} seconds (7 days, the SigV4 "
            f"maximum), got {args.ttl}",
            EXIT_USAGE,
        )
    spec = read_spec()
    month = check_month(spec, parse_month(args.month))
    [dataset] = check_datasets(spec, [args.dataset])
    with open_instance() as instance:
        target = Target(check_customer(instance, args.customer), month, [dataset])
        link = fresh_link(instance, target, dataset, args.ttl)
    if args.json:
        print_json(
            {
                "uri": link.uri,
                "url": link.url,
                "expires_at": link.expires_at.isoformat() if link.expires_at else None,
            }
        )
    elif link.url is None:
        sys.stderr.write("local storage has no download links; this is the file's path\n")
        sys.stdout.write(f"{link.uri}\n")
    else:
        sys.stdout.write(f"{link.url}\n")
        sys.stderr.write(f"expires {link.expires_at.isoformat() if link.expires_at else ''}\n")
    return EXIT_OK


def fresh_link(
    instance: dg.DagsterInstance, target: Target, dataset: str, ttl_seconds: int | None
) -> FreshLink:
    """Sign a link for the partition's latest delivered file of `dataset`."""
    key, partition = export_asset_key(dataset), target.partition_key
    recorded = latest_metadata(instance, key, partition)
    if recorded is None:
        raise CliError(
            f"no finished export of {dataset} for {target.customer} {target.month}: "
            f"run `export-pipeline run {target.customer} {target.month} --dataset {dataset}`",
            EXIT_NOT_FOUND,
        )
    with configured_storage({EXPORT_STORAGE_KEY: export_storage(os.environ)}) as storage:
        # the handle `load_input` gives: checked to still be there at its recorded size
        stored = recorded_file(storage.store(), dataset, target.customer, target.month, recorded)
        if isinstance(storage, LocalExportStorageResource):  # no links: the file's path
            return FreshLink(stored.uri, None, None)
        link = stored.presign(ttl_seconds)
    return FreshLink(stored.uri, link.url, link.expires_at)
