"""Export errors as Dagster failures: one clear line, the cause chained, retried only if it may
pass (see `export_pipeline.retryable`)."""

from __future__ import annotations

import dagster as dg

from export_pipeline.errors import ExportError
from export_pipeline.retryable import is_transient


def export_failure(what: str, exc: BaseException) -> dg.Failure:
    """A `dg.Failure` for `exc`, naming `what` failed (asset and partition).

    Raise it `from exc`, so the UI shows the original error under the message. Permanent
    failures carry `allow_retries=False`, which makes Dagster skip the asset's RetryPolicy.
    """
    transient = is_transient(exc)
    detail = str(exc) if isinstance(exc, ExportError) else f"{type(exc).__name__}: {exc}"
    kind = "transient, may be retried" if transient else "permanent, not retried"
    return dg.Failure(
        description=f"{what}: {detail} ({kind})",
        allow_retries=transient,
        metadata={"transient": dg.MetadataValue.bool(transient)},
    )
