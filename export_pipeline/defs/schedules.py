"""The monthly schedule: on the 1st, export last month for every customer."""

from __future__ import annotations

from datetime import date

import dagster as dg

from export_pipeline.defs.jobs import exports_job
from export_pipeline.defs.run_requests import ranged_run_requests
from export_pipeline.partitions import CUSTOMERS_PARTITIONS_NAME, previous_month

TRIGGER_TAG = "export/trigger"


def build_monthly_schedule(months_start: date, hour: int, timezone: str) -> dg.ScheduleDefinition:
    """Last month for every customer, as ranged runs of `exports_job` (a month of 1,000 customers is
    two runs); `hour` and `timezone` say when on the 1st.

    The run keys name the month, so a tick evaluated twice (a daemon restart, a retried tick)
    never starts a second run for it.
    """

    @dg.schedule(
        name="monthly_exports_schedule",
        job=exports_job,
        cron_schedule=f"0 {hour} 1 * *",
        execution_timezone=timezone,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description=f"On the 1st at {hour:02d}:00 {timezone}: last month, every dataset, "
        "every customer, in ranged runs of exports_job.",
    )
    def monthly_exports_schedule(
        context: dg.ScheduleEvaluationContext,
    ) -> list[dg.RunRequest] | dg.SkipReason:
        month = previous_month(context.scheduled_execution_time.date())
        if month.start < months_start:
            return dg.SkipReason(f"{month} is before months.start ({months_start:%Y-%m})")
        customers = context.instance.get_dynamic_partitions(CUSTOMERS_PARTITIONS_NAME)
        if not customers:
            return dg.SkipReason("no customers yet: customers_sensor adds them as partitions")
        return ranged_run_requests(
            customers, [month], f"monthly-{month}", {TRIGGER_TAG: "schedule"}
        )

    return monthly_exports_schedule
