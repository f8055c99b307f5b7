"""Writers racing over one member, for real: WeCom's answer is computed, then delivered late (the
emulator's timeout_after_apply fault), while another writer acts in between. The older answer must
never overwrite the newer one."""

from __future__ import annotations

import threading
import time

import sqlalchemy as sa

from wecom_plugin.extensions import db
from wecom_plugin.models.base import utcnow
from wecom_plugin.models.inbox import CallbackInbox
from wecom_plugin.services import directory_events as handlers
from wecom_plugin.services.directory_sync import run_sync
from wecom_plugin.wecom.events import UserDeleted, UserId, UserUpdated


def _inbox_row(app, key: str) -> CallbackInbox:
    with app.app_context():
        row = CallbackInbox(receiver="contacts", dedupe_key=key, kind="event/change_contact/x", plaintext="<xml/>",
                            state="new", received_at=utcnow(), deliveries=1)  # fmt: skip
        db.session.add(row)
        db.session.commit()
        db.session.refresh(row)
        db.session.expunge(row)
        return row


def _handle(app, handler, event, row) -> None:
    with app.app_context():
        handler(db.session, event, row)
        db.session.commit()
        db.session.remove()


def _member(emulator, n: int) -> str:
    return [u for u in emulator.users() if u.departments and u.departments[0] != 1][n].userid


def test_a_late_answer_to_an_update_does_not_undo_a_departure_recorded_meanwhile(tenant_app, mirror, emulator):
    run_sync(tenant_app)
    userid = _member(emulator, 3)
    emulator.admin("directory/update", userid=userid, position="新职务")
    # The update handler's user/get is answered (member active) but the answer arrives 1 s late.
    emulator.admin("faults", action="timeout_after_apply", endpoint="user/get", seconds=1.0, times=1)
    update = threading.Thread(
        target=_handle,
        args=(tenant_app, handlers.on_user_changed, UserUpdated(user_id=UserId(userid)), _inbox_row(tenant_app, "u")),
    )
    update.start()
    time.sleep(0.3)
    # Meanwhile the member leaves and another worker handles the delete_user.
    emulator.admin("directory/depart", userid=userid)
    _handle(tenant_app, handlers.on_user_deleted, UserDeleted(user_id=UserId(userid)), _inbox_row(tenant_app, "d"))
    assert mirror.person(userid).status == 5
    update.join(timeout=30)
    assert mirror.person(userid).status == 5  # the stale "active" answer was not written
    assert [o.kind for o in mirror.outbox()] == ["departed"]


def test_a_sync_does_not_overwrite_a_departure_a_callback_recorded_while_it_listed(tenant_app, mirror, emulator):
    run_sync(tenant_app, include_tags=False)
    userid = _member(emulator, 4)
    emulator.admin("directory/update", userid=userid, position="A")  # the sync will list a change
    # Every department's list is computed at once but arrives 1 s later.
    emulator.admin("faults", action="timeout_after_apply", endpoint="user/list", seconds=1.0)
    result = {}
    sync = threading.Thread(target=lambda: result.update(report=run_sync(tenant_app, include_tags=False)))
    sync.start()
    time.sleep(0.5)
    emulator.admin("directory/depart", userid=userid)
    _handle(tenant_app, handlers.on_user_deleted, UserDeleted(user_id=UserId(userid)), _inbox_row(tenant_app, "d"))
    sync.join(timeout=60)
    assert mirror.person(userid).status == 5
    assert [o.kind for o in mirror.outbox()] == ["departed"]
    assert result["report"].stats.get("stale_skipped", 0) >= 1


def test_only_one_sync_writes_at_a_time(tenant_app, emulator):
    emulator.admin("faults", action="latency", endpoint="user/list", seconds=0.3)
    first = threading.Thread(target=run_sync, args=(tenant_app,))
    first.start()
    time.sleep(0.2)
    result = tenant_app.test_cli_runner().invoke(args=["directory", "sync"])
    first.join(timeout=60)
    assert result.exit_code == 1 and "is still running" in result.output
    with tenant_app.app_context():
        states = list(db.session.scalars(sa.text("SELECT state FROM directory_sync ORDER BY id")))
    assert states == ["completed"]
