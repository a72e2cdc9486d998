"""The monthly schedule: on the 1st, export last month for every customer."""

from __future__ import annotations

from datetime import date

import dagster as dg

from export_pipeline.partitions import previous_month


def build_monthly_schedule(
    job: dg.JobDefinition, months_start: date, hour: int, timezone: str
) -> dg.ScheduleDefinition:
    """One run of `job` per month, for last month; `hour` and `timezone` say when on the 1st.

    The run key is the month, so a tick evaluated twice (a daemon restart, a retried tick)
    never starts a second run for it.
    """

    @dg.schedule(
        name="monthly_exports_schedule",
        job=job,
        cron_schedule=f"0 {hour} 1 * *",
        execution_timezone=timezone,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description=f"On the 1st at {hour:02d}:00 {timezone}: last month, every dataset, "
        "every customer, in one run of monthly_exports_job.",
    )
    def monthly_exports_schedule(
        context: dg.ScheduleEvaluationContext,
    ) -> dg.RunRequest | dg.SkipReason:
        month = previous_month(context.scheduled_execution_time.date())
        if month.start < months_start:
            return dg.SkipReason(f"{month} is before months.start ({months_start:%Y-%m})")
        return dg.RunRequest(
            run_key=f"monthly-{month}",
            partition_key=month.start.isoformat(),
            tags={"export/trigger": "schedule"},
        )

    return monthly_exports_schedule
