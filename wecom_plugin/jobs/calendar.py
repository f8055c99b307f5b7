"""Job types of the workday calendar (see :mod:`wecom_plugin.services.workday_calendar`).

* ``calendar.coverage`` (at-least-once: raising an alert is deduplicated by its key, so running it
  twice is harmless): daily at 09:05 in WECOM_TIMEZONE, look CALENDAR_ALERT_DAYS ahead and alert
  the admins when a day in that window lies in a year without official holiday data, saying what
  CALENDAR_FALLBACK will do and that ``wecom-plugin calendar import FILE`` fixes it.
"""

from __future__ import annotations

from typing import Any

from wecom_plugin.jobs.context import JobContext
from wecom_plugin.runtime.registry import AT_LEAST_ONCE, PeriodicDefinition, job_type, periodic_provider

CHECK_TIME = "09:05"  # office hours, so the alert reaches people who can act on it the same day


@periodic_provider
def calendar_schedule(settings: Any) -> list[PeriodicDefinition]:
    """The daily calendar look ahead."""
    return [
        PeriodicDefinition(
            key="calendar.coverage",
            job_name="calendar.coverage",
            spec={"kind": "daily", "times": [CHECK_TIME]},
            # A clock down at 09:05 still checks when it comes back the same day.
            misfire_grace_seconds=12 * 3600,
        )
    ]


@job_type("calendar.coverage", delivery=AT_LEAST_ONCE, max_attempts=3)
def calendar_coverage(ctx: JobContext) -> dict[str, Any]:
    """Alert CALENDAR_ALERT_DAYS ahead of a year without official holiday data (导入国务院节假日通知)."""
    from wecom_plugin.extensions import db
    from wecom_plugin.models.dbtime import db_now
    from wecom_plugin.services.workday_calendar import check_coverage

    session = db.session
    # The database clock, like every other "when": a host with a skewed clock gets the same date.
    today = db_now(session).astimezone(ctx.settings.tz).date()
    year = check_coverage(session, ctx.settings, today)
    session.commit()
    return {"today": today.isoformat(), "year_without_data": year}
