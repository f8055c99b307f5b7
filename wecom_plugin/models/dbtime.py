"""The database clock.

"Due" and "lease still valid" are decided by the database's clock, never the host's: two hosts
whose clocks disagree by minutes still agree on the database's ``now``. These SQL expressions
render per dialect; :func:`db_now` reads the same clock into Python.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.expression import FunctionElement
from sqlalchemy.sql.visitors import InternalTraversal

from wecom_plugin.models.base import UTCDateTime

# SQLite's strftime gives milliseconds; three zeros pad it to SQLAlchemy's 6-digit stored format,
# so text comparisons against stored UTCDateTime values are exact.
_SQLITE_NOW = "strftime('%Y-%m-%d %H:%M:%f000', 'now'{offset})"


class sql_now(FunctionElement):  # noqa: N801 - reads like the SQL function it renders
    """The database's current UTC time, optionally shifted by ``seconds``."""

    type = UTCDateTime()
    inherit_cache = True
    # The offset is part of the cache key, so statements differing only in it compile separately.
    _traverse_internals = [("seconds", InternalTraversal.dp_plain_obj)]

    def __init__(self, seconds: float = 0.0):
        self.seconds = float(seconds)
        super().__init__()


@compiles(sql_now, "sqlite")
def _sqlite_now(element: sql_now, compiler, **kw) -> str:
    offset = f", '{element.seconds:+.6f} seconds'" if element.seconds else ""
    return _SQLITE_NOW.format(offset=offset)


@compiles(sql_now, "postgresql")
def _pg_now(element: sql_now, compiler, **kw) -> str:
    # statement_timestamp(), not now(): now() is frozen at the start of a long transaction.
    if element.seconds:
        return f"(statement_timestamp() + interval '{element.seconds:.6f} seconds')"
    return "statement_timestamp()"


def db_now(connection: sa.Connection | sa.orm.Session) -> datetime:
    """Read the database clock (aware UTC)."""
    return connection.execute(sa.select(sql_now())).scalar_one()
