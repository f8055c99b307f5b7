"""Declarative base, naming convention and the column types every model shares."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase

# Stable constraint names, so Alembic can drop and alter them on SQLite and PostgreSQL alike.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)


class UTCDateTime(sa.types.TypeDecorator):
    """A timezone-aware UTC datetime on every backend.

    PostgreSQL stores ``timestamptz``. SQLite has no time type: values are stored as naive UTC text
    in SQLAlchemy's fixed-width format (``YYYY-MM-DD HH:MM:SS.ffffff``), which sorts and compares
    correctly as text and matches :func:`wecom_plugin.models.dbtime.sql_now` on SQLite.
    Naive datetimes are refused on the way in: an unlabelled local time is a bug.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTCDateTime column; attach a timezone")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, str):  # raw SQLite text produced by SQL expressions
            value = datetime.fromisoformat(value)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# JSON documents: JSONB on PostgreSQL (indexable, compact), JSON text on SQLite.
JSONDoc = sa.JSON().with_variant(JSONB(), "postgresql")


def utcnow() -> datetime:
    """Host time in UTC, for values that are informational only.

    Anything that decides whether work is due or a lease is valid uses the database clock
    (:mod:`wecom_plugin.models.dbtime`) instead, so hosts with skewed clocks agree.
    """
    return datetime.now(UTC)


def dialect_name(executor: Any) -> str:
    """``'sqlite'`` or ``'postgresql'`` for a Session, scoped session or Connection."""
    if isinstance(executor, sa.Connection):
        return executor.dialect.name
    return executor.get_bind().dialect.name


def insert_for(executor: Any, table: sa.Table):
    """A dialect ``INSERT`` supporting ``on_conflict_*`` (PostgreSQL and SQLite share the API)."""
    from sqlalchemy.dialects import postgresql, sqlite

    return (postgresql if dialect_name(executor) == "postgresql" else sqlite).insert(table)
