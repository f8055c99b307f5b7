"""Receiving WeCom callbacks: store first, acknowledge, process later.

WeCom gives a receiver 5 s and re-sends up to three times (contract §7.4); callbacks also arrive
late, twice, out of order or never. So a callback is only verified and stored in the inbox (one
row per receiver and delivery, duplicates fold into it) with its dispatch job, in one transaction;
the answer is 200 at once and nothing calls WeCom inside the request. The ``callbacks.dispatch``
job then hands the event to its handler. Events without a handler yet are kept (``unhandled``),
never dropped. Handlers treat events as hints and re-read state from WeCom before acting.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from wecom_plugin.models.base import insert_for, utcnow
from wecom_plugin.models.inbox import CallbackInbox
from wecom_plugin.runtime.queue import enqueue
from wecom_plugin.wecom.callbacks import Callback
from wecom_plugin.wecom.events import Event, parse_event

log = logging.getLogger("wecom_plugin.callbacks")

INBOX = CallbackInbox.__table__
RECEIVERS = ("app", "contacts")

# Event class name -> handler(session, event, inbox_row) -> None. Filled by later features
# (the directory mirror, card clicks); until then events are kept as "unhandled".
Handler = Callable[[Session, Event, CallbackInbox], None]
HANDLERS: dict[str, Handler] = {}


def register_handler(event_class: type[Event], handler: Handler) -> None:
    HANDLERS[event_class.__name__] = handler


def event_kind(callback: Callback) -> str:
    event = callback.event
    parts = [event.msg_type or "?", event.event or "", event.change_type or ""]
    return "/".join(p for p in parts if p)[:100]


def store(session: Session, receiver: str, callback: Callback) -> bool:
    """Store one verified callback and enqueue its dispatch, in one transaction (committed here).

    Returns False for a duplicate (a retry, or two copies at once): it only bumps ``deliveries``.
    """
    if receiver not in RECEIVERS:
        raise ValueError(f"unknown receiver {receiver!r}")
    inserted = session.execute(
        insert_for(session, INBOX)
        .values(
            receiver=receiver,
            dedupe_key=callback.dedupe_key[:100],
            kind=event_kind(callback),
            plaintext=callback.raw.decode("utf-8", "replace"),
            state="new",
            received_at=utcnow(),
            deliveries=1,
        )
        .on_conflict_do_nothing(index_elements=["receiver", "dedupe_key"])
        .returning(INBOX.c.id)
    ).scalar_one_or_none()
    if inserted is None:
        session.execute(
            sa.update(INBOX)
            .where(INBOX.c.receiver == receiver, INBOX.c.dedupe_key == callback.dedupe_key[:100])
            .values(deliveries=INBOX.c.deliveries + 1)
        )
        session.commit()
        return False
    enqueue("callbacks.dispatch", {"inbox_id": inserted}, dedupe_key=f"inbox:{inserted}", session=session)
    session.commit()
    log.info("stored %s callback #%s (%s)", receiver, inserted, event_kind(callback))
    return True


def dispatch(session: Session, inbox_id: int) -> dict[str, Any]:
    """Hand a stored callback to its handler; keep it as ``unhandled`` when there is none yet.

    No transaction is held while the handler runs (it may call WeCom: on SQLite an open write
    transaction would block every receiver's answer). The handler's final writes commit together
    with a compare-and-set of the row's state from ``new``: a worker that lost the job while inside
    the handler (paused past its lease) finds the row already handled and rolls its writes back.
    """
    from wecom_plugin.wecom import safexml

    row = session.get(CallbackInbox, inbox_id)
    if row is None or row.state != "new":
        result = {"skipped": "already processed" if row else "gone"}
        session.rollback()
        return result
    kind, plaintext = row.kind, row.plaintext
    session.expunge(row)  # handed to the handler detached: its fields stay readable
    session.rollback()  # end the read before the handler runs
    event = parse_event(safexml.parse(plaintext.encode("utf-8")))
    handler = HANDLERS.get(type(event).__name__)
    state = "unhandled"
    if handler is not None:
        handler(session, event, row)
        state = "handled"
    done = session.execute(
        sa.update(INBOX)
        .where(INBOX.c.id == inbox_id, INBOX.c.state == "new")
        .values(state=state, processed_at=utcnow())
    ).rowcount
    if done != 1:
        session.rollback()
        return {"skipped": "processed by another worker"}
    session.commit()
    return {"kind": kind, "state": state}
