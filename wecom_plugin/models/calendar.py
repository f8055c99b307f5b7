"""The imported workday calendar: years whose State Council notice an admin has imported.

The pinned chinesecalendar package covers the years it was released with; a later year (or a
correction of a covered one) is imported from the State Council's annual notice with
``wecom-plugin calendar import FILE`` (services/workday_calendar.py). An imported year replaces
the package for every day of that year (domain/workdays.py).

Only the days that differ from an ordinary week are stored: the rest days of the holiday breaks
(``kind="holiday"``, with the holiday's Chinese name) and the 调休 make-up workdays
(``kind="workday"``). Every other day of an imported year is a workday Monday to Friday and a rest
day at the weekend. A year's rows are replaced as a whole, in one transaction.
"""

from __future__ import annotations

from datetime import date, datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from wecom_plugin.models.base import Base, UTCDateTime, utcnow

HOLIDAY, WORKDAY = "holiday", "workday"


class CalendarYear(Base):
    """One imported year: where its data comes from, who imported it and when.

    ``imported_at`` also versions the calendar: every process rebuilds its cached calendar when
    the set of (year, imported_at) changes (services/workday_calendar.py).
    """

    __tablename__ = "calendar_year"

    year: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=False)
    # The notice's title and number, e.g. "国务院办公厅关于2027年部分节假日安排的通知（国办发明电〔2026〕N号）".
    source: Mapped[str] = mapped_column(sa.String(500))
    imported_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    imported_by: Mapped[str] = mapped_column(sa.String(64))
    holiday_count: Mapped[int] = mapped_column(sa.Integer, default=0)
    workday_count: Mapped[int] = mapped_column(sa.Integer, default=0)


class CalendarDay(Base):
    """One day of an imported year that is not an ordinary weekday or weekend day."""

    __tablename__ = "calendar_day"

    day: Mapped[date] = mapped_column(sa.Date, primary_key=True)
    # The imported year the row belongs to (always ``day.year``): a year is deleted and rewritten
    # by this column.
    year: Mapped[int] = mapped_column(sa.Integer, index=True)
    # "holiday": a rest day of a statutory holiday break; "workday": a 调休 make-up workday.
    kind: Mapped[str] = mapped_column(sa.String(16))
    # The holiday's Chinese name (春节, 国庆节, ...) for a rest day; None for a make-up day.
    name: Mapped[str | None] = mapped_column(sa.String(32))
