"""The imported employee-number (工号) table: what the HR system calls a person, mapped to WeCom.

HR systems know the 工号, not the WeCom userid. ``POST /api/v1/offboardings`` with ``employee_id``
looks here first, then at the directory field named by EMPLOYEE_ID_FIELD (``person.employee_id``).
Rows come from ``wecom-plugin offboard employees import FILE.csv`` (services/employee_numbers.py).

``employee_id`` is kept exactly as imported after trimming surrounding whitespace: ``A001`` and
``a001`` are two numbers. ``person_id`` is the mirror's person at import time (ids survive a
userid rename); ``userid`` is their userid then, used when that person row is gone.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from wecom_plugin.models.base import Base, UTCDateTime, utcnow


class EmployeeNumber(Base):
    """One employee number and the person it names."""

    __tablename__ = "employee_number"

    employee_id: Mapped[str] = mapped_column(sa.String(128), primary_key=True)
    userid: Mapped[str] = mapped_column(sa.String(64))
    person_id: Mapped[int | None] = mapped_column(sa.Integer, index=True)
    imported_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    source: Mapped[str] = mapped_column(sa.String(255), default="")
