"""Incremental directory updates from change_contact callbacks (contract §8.1-§8.5).

Callbacks are hints: they arrive late, twice, out of order or never, and since 2022 most carry only
ids. So every handler re-reads the member, department or tag from WeCom and writes what WeCom says
*now* (compare-and-set, see :mod:`directory_mirror`); the event itself only says where to look.
That makes duplicates no-ops and order irrelevant: a stale update_user after a delete_user re-reads
a member who no longer exists and changes nothing.

Departure rules (issue 4; domain.directory):

* delete_user + ``user/get`` 60111 → departed. If ``user/get`` finds them active, the delete was
  stale (a rehire under the same id) and the current answer is written instead.
* update_user with Status 2 or 5 → disabled / departed, as ``user/get`` reports it.
* one 60111 on an update re-read is *not* a departure (an unannounced rename looks the same): it
  asks for a reconciliation soon, which decides with the whole directory in view.
* 60011 is a scope problem, never a departure: an alert with the console fix.

Handlers run inside the ``callbacks.dispatch`` job (at-least-once). They end the session's
transaction before calling WeCom, so no database lock is held across a network call.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import timedelta
from typing import Any

from flask import current_app
from sqlalchemy.orm import Session

from wecom_plugin.domain import directory as rules
from wecom_plugin.domain.directory import DepartmentRecord, MemberRecord, TagRecord
from wecom_plugin.models.inbox import CallbackInbox
from wecom_plugin.runtime.queue import enqueue
from wecom_plugin.services import directory_mirror as mirror
from wecom_plugin.services.callbacks import register_handler
from wecom_plugin.services.directory_alerts import raise_scope_alert, raise_setup_alert
from wecom_plugin.services.directory_mirror import DEPARTMENT, TAG, Origin
from wecom_plugin.wecom import errors as wecom_errors
from wecom_plugin.wecom.api import department as department_api
from wecom_plugin.wecom.api import tag as tag_api
from wecom_plugin.wecom.api import user as user_api
from wecom_plugin.wecom.diagnosis import diagnose
from wecom_plugin.wecom.errors import WeComError
from wecom_plugin.wecom.events import (
    PartyCreated,
    PartyDeleted,
    PartyUpdated,
    TagUpdated,
    UserCreated,
    UserDeleted,
    UserUpdated,
)

log = logging.getLogger("wecom_plugin.directory")

RECONCILE_SOON_SECONDS = 120


def _client() -> Any:
    from wecom_plugin.services.wecom import client_for

    return client_for(current_app._get_current_object())  # noqa: SLF001 - the app object, not the proxy


def _employee_field() -> str:
    """EMPLOYEE_ID_FIELD: the directory field holding members' 工号 (empty: off)."""
    return current_app.extensions["wecom_settings"].employee_id_field


def _read(session: Session, call: Any, *args: Any) -> tuple[Any, WeComError | None]:
    """End the transaction, then call WeCom. Setup errors (60020, 48009...) raise an alert and re-raise."""
    session.commit()
    client = _client()
    try:
        return call(client, *args), None
    except WeComError as exc:
        if exc.errcode == wecom_errors.NO_PRIVILEGE:
            _scope_alert(session, exc)
            return None, exc
        if diagnose(exc.errcode) is not None:
            raise_setup_alert(session, exc, title_zh="通讯录回调处理失败", title_en="Directory callback failed")
            session.commit()
            raise
        return None, exc
    finally:
        client.close()


def _scope_alert(session: Session, exc: WeComError) -> None:
    raise_scope_alert(session, {"endpoint": exc.endpoint})
    session.commit()


def _origin(inbox_id: int, reason: str | None = None) -> Origin:
    return Origin("callback", inbox_id=inbox_id, reason=reason)


def reconcile_soon(session: Session, why: str) -> None:
    """Ask for a full sync in a couple of minutes (one per window however many events ask)."""
    from wecom_plugin.models.dbtime import db_now

    bucket = int(db_now(session).timestamp() // RECONCILE_SOON_SECONDS)
    enqueue(
        "directory.sync",
        {"trigger": "callback", "reason": why[:200]},
        run_after=timedelta(seconds=RECONCILE_SOON_SECONDS),
        dedupe_key=f"directory-sync:soon:{bucket}",
        session=session,
    )


# --- members -------------------------------------------------------------------------------------------
# A member's state is re-read at most this many times when other writers keep changing the row
# while we ask WeCom; after that a reconciliation settles it.
FRESH_READ_ATTEMPTS = 3


def _seen(session: Session, userid: str) -> str | None:
    """The mirror's fingerprint for ``userid`` right now ("" for a row without one, None if absent)."""
    person = mirror.find_person(session.connection(), userid)
    session.rollback()
    return None if person is None else person.fingerprint


def on_user_changed(session: Session, event: UserCreated | UserUpdated, row: CallbackInbox) -> None:
    """create_user / update_user: apply a NewUserID rename, then re-read the member and write the answer."""
    inbox_id = row.id
    old, new = event.user_id, event.new_user_id
    if new and old.folded != new.folded:
        _rename(session, old, new, inbox_id)
    current_id = str(event.current_user_id)
    if current_id:
        _refresh_member(session, current_id, Origin("callback", inbox_id=inbox_id), event.change_type or "")


def _refresh_member(session: Session, userid: str, origin: Origin, why: str, *, deleted: bool = False) -> None:
    """Re-read ``userid`` and write WeCom's answer, unless another writer changed the row while we
    asked (then ask again: their answer may be newer than ours, or older).

    ``deleted``: the event was delete_user, so 60111 confirms a departure. Otherwise one 60111 is
    not a departure (an unannounced rename looks the same) and asks for a reconciliation soon.
    """
    for _attempt in range(FRESH_READ_ATTEMPTS):
        before = _seen(session, userid)
        answer, error = _read(session, user_api.get, userid)
        conn = session.connection()
        person = mirror.find_person(conn, userid, lock=True)
        if (None if person is None else person.fingerprint) != before:
            session.rollback()
            continue  # someone wrote while we asked: read again
        if error is None:
            try:
                rec = MemberRecord.from_api(
                    answer, person.status if person is not None else rules.ACTIVE, _employee_field()
                )
            except ValueError:
                log.warning("user/get answered without a userid; ignored")
                return
            if deleted:
                origin = replace(origin, reason="delete_user was stale: user/get still answers")
            mirror.upsert_member(conn, rec, origin, current=person, expected=before)
            return
        if error.errcode == wecom_errors.NO_PRIVILEGE:
            return
        if error.errcode != wecom_errors.USERID_NOT_FOUND:
            raise error
        if deleted:
            if person is not None:
                mirror.mark_departed(conn, person, replace(origin, reason="delete_user; user/get 60111"))
            return
        log.info("%s re-read answered 60111: reconciling soon", why)
        reconcile_soon(session, f"user/get answered 60111 after {why}")
        return
    session.rollback()
    reconcile_soon(session, f"the member kept changing during {why}")


def _rename(session: Session, old: str, new: str, inbox_id: int) -> None:
    """A NewUserID rename keeps the person's internal id (and so their history and memberships).

    The event is authoritative: a departed person still holding the new id (WeCom reuses ids) is
    moved aside; a second person created because an update for the new id overtook this event is
    folded back in.
    """
    origin = Origin("callback", inbox_id=inbox_id)
    conn = session.connection()
    person = mirror.find_person(conn, old, lock=True)
    if person is None:
        session.rollback()
        return  # unknown, or already renamed (a duplicate, or a sync got there first)
    already = mirror.find_person(conn, new, lock=True)
    if already is not None and already.id != person.id:
        if already.status == rules.LEFT:
            mirror.move_aside(conn, already, origin)
        elif person.status != rules.LEFT and _created_by_callback(conn, already.id):
            mirror.merge_person(conn, person, already, origin)
        else:
            session.rollback()
            reconcile_soon(session, "a rename onto an id another active member holds")
            session.commit()
            return
    renamed = replace(mirror.record_of(person), userid=new)
    mirror.upsert_member(conn, renamed, origin, current=person)
    session.commit()


def _created_by_callback(conn: Any, person_id: int) -> bool:
    """True if the person exists only because a callback created them (no sync ever listed them)."""
    import sqlalchemy as sa

    sources = set(
        conn.execute(sa.select(mirror.CHANGE.c.source).where(mirror.CHANGE.c.person_id == person_id)).scalars()
    )
    return sources == {"callback"}


def on_user_deleted(session: Session, event: UserDeleted, row: CallbackInbox) -> None:
    """delete_user: departed once ``user/get`` confirms the id is gone; a live answer means the delete is stale."""
    userid = str(event.user_id)
    if userid:
        _refresh_member(session, userid, Origin("callback", inbox_id=row.id), "delete_user", deleted=True)


# --- departments -----------------------------------------------------------------------------------------
def on_party_changed(session: Session, event: PartyCreated | PartyUpdated | PartyDeleted, row: CallbackInbox) -> None:
    """create/update/delete_party: re-read the department (60003 = gone)."""
    inbox_id = row.id
    if event.party_id is None:
        return
    answer, error = _read(session, department_api.get, event.party_id)
    conn = session.connection()
    if error is not None:
        if error.errcode == wecom_errors.DEPARTMENT_NOT_FOUND:
            mirror.mark_department_deleted(conn, event.party_id, _origin(inbox_id))
        elif error.errcode != wecom_errors.NO_PRIVILEGE:
            raise error
        return
    try:
        rec = DepartmentRecord.from_api(answer.get("department", answer))
    except ValueError:
        return
    current = conn.execute(DEPARTMENT.select().where(DEPARTMENT.c.id == rec.id)).one_or_none()
    mirror.upsert_department(conn, rec, _origin(inbox_id), current)


# --- tags ----------------------------------------------------------------------------------------------------
def on_tag_updated(session: Session, event: TagUpdated, row: CallbackInbox) -> None:
    """update_tag: tag events and member events are unordered (§8.5), so re-read the whole tag."""
    inbox_id = row.id
    if event.tag_id is None:
        return
    answer, error = _read(session, tag_api.get, event.tag_id)
    conn = session.connection()
    if error is not None:
        if error.errcode == wecom_errors.INVALID_TAGID:
            mirror.mark_tag_deleted(conn, event.tag_id, _origin(inbox_id))
        elif error.errcode != wecom_errors.NO_PRIVILEGE:
            raise error
        return
    rec = TagRecord.from_api(event.tag_id, "", answer)
    current = conn.execute(TAG.select().where(TAG.c.id == rec.id)).one_or_none()
    mirror.upsert_tag(conn, rec, _origin(inbox_id), current, mirror.person_ids_by_folded(conn, rec.users))


for _cls in (UserCreated, UserUpdated):
    register_handler(_cls, on_user_changed)
register_handler(UserDeleted, on_user_deleted)
for _cls in (PartyCreated, PartyUpdated, PartyDeleted):
    register_handler(_cls, on_party_changed)
register_handler(TagUpdated, on_tag_updated)
