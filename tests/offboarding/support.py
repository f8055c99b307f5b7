"""Setup for the offboarding tests: governed chats on the sandbox tenant (real HTTP), their members
recorded as the executor would, the worker drained past the coalescing window, API keys."""

from __future__ import annotations

import time

import sqlalchemy as sa

from tests.groups import check_support
from tests.groups.check_support import governed_chat, rows, run_worker, updates
from wecom_plugin.extensions import db
from wecom_plugin.models.claims import ClaimState
from wecom_plugin.models.groups import ChatChange, Offboarding
from wecom_plugin.models.jobs import Job
from wecom_plugin.services import api_keys
from wecom_plugin.services import offboarding as service
from wecom_plugin.services.membership_check import refresh_chat_members

tenant_app = check_support.tenant_app  # the fixture
WAITED = ("groups.apply", "offboarding.consume_outbox", "offboarding.run")


def chat(app, members: list[str], *, owner: str | None = None, admins: list[str] | None = None, name="项目群"):
    """A governed chat created by our app, with ``chat_member`` as a check would have recorded it."""
    gid, chatid = governed_chat(app, members, owner=owner, admins=admins, name=name)
    with app.app_context():
        refresh_chat_members(db.engine, gid, members)
    return gid, chatid


def drain(app, timeout: float = 10.0) -> None:
    """Run the worker until no removal work is waiting (jobs due after the coalescing window too)."""
    deadline = time.monotonic() + timeout
    while True:
        run_worker(app, rounds=50)
        with app.app_context():
            waiting = db.session.scalar(
                sa.select(sa.func.count())
                .select_from(Job)
                .where(Job.name.in_(WAITED), Job.state.in_((ClaimState.READY, ClaimState.RUNNING)))
            )
            db.session.rollback()
        if not waiting:
            return
        assert time.monotonic() < deadline, "removal jobs still waiting"
        time.sleep(0.1)


def status(app, ref) -> dict | None:
    with app.app_context():
        view = service.status(db.session, ref)
        db.session.commit()
        return view


def offboardings(app) -> list[Offboarding]:
    return sorted(rows(app, Offboarding), key=lambda o: o.id)


def removals(app, **filters) -> list[ChatChange]:
    where = [ChatChange.action == "remove"] + [getattr(ChatChange, k) == v for k, v in filters.items()]
    return sorted(rows(app, ChatChange, *where), key=lambda c: c.id)


def dels(emulator, chatid: str | None = None) -> list[list[str]]:
    return [u["body"].get("del_user_list", []) for u in updates(emulator, chatid)]


def key(app, name: str, scopes=("offboarding:write", "offboarding:read")) -> dict[str, str]:
    with app.app_context():
        client = api_keys.create_client(db.session, name, list(scopes))
        db.session.flush()
        key_id, secret = api_keys.create_key(
            db.session, client, encryption_key=app.extensions["wecom_settings"].encryption_key
        )
        db.session.commit()
    return {"Authorization": f"Bearer {key_id}.{secret}", "Content-Type": "application/json"}


# --- the trigger and model tests (test_triggers.py, test_stateful.py) ------------------------------
def wecom_removes_leavers(emulator, removes: bool) -> None:
    """The two readings of contract §14.8: WeCom takes deleted (and disabled) members out of app
    chats itself (``remove``), or leaves them listed (``keep``)."""
    policy = "remove" if removes else "keep"
    emulator.flags(on_member_delete=policy, disabled_member_in_chat=policy)


def update_count(emulator, chatid: str) -> int:
    """``appchat/update`` calls the sandbox tenant received for ``chatid`` (its request log)."""
    return len(updates(emulator, chatid))


def make_due(app, *names: str) -> int:
    """Time passes: ready jobs of ``names`` (all when none given) fall due now."""
    from datetime import UTC, datetime

    with app.app_context():
        query = sa.update(Job).where(Job.state == ClaimState.READY)
        if names:
            query = query.where(Job.name.in_(names))
        moved = db.session.execute(query.values(due_at=datetime(2000, 1, 1, tzinfo=UTC))).rowcount
        db.session.commit()
    return moved


def fire_schedule(app, key: str) -> int:
    """The clock's next occurrence of the code schedule ``key`` has come: one real clock tick with
    that schedule due (and only it). Returns the jobs the clock enqueued."""
    from wecom_plugin.jobs.clock import Clock, sync_code_schedules
    from wecom_plugin.models import Schedule
    from wecom_plugin.models.dbtime import sql_now

    settings = app.extensions["wecom_settings"]
    with app.app_context():
        sync_code_schedules(db.session, settings)
        db.session.execute(sa.update(Schedule).where(Schedule.origin == "code").values(next_run_at=sql_now(3600)))
        db.session.execute(sa.update(Schedule).where(Schedule.key == key).values(next_run_at=sql_now(-1)))
        db.session.commit()
    return Clock(app).tick()


def schedule_interval(app, key: str) -> int:
    """Seconds between occurrences of the code schedule ``key`` (its interval spec)."""
    from wecom_plugin.jobs.clock import periodic_definitions

    [found] = [d for d in periodic_definitions(app.extensions["wecom_settings"]) if d.key == key]
    assert found.spec["kind"] == "interval", found.spec
    return int(found.spec["seconds"])
