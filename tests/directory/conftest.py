"""Fixtures for the directory mirror: an app wired to the sandbox tenant over real HTTP."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from wecom_plugin.extensions import db
from wecom_plugin.models.directory import Department, DirectoryChange, DirectoryOutbox, Person, Tag, TagMember

CONTACT_TOKEN, CONTACT_KEY = "DirectoryToken9", "b" * 43


@pytest.fixture
def tenant_app(make_app, db_url, emulator):
    """The plugin on a fresh database (SQLite and PostgreSQL), talking to the sandbox tenant."""
    return make_app(
        DATABASE_URL=db_url,
        **emulator.plugin_settings(),
        WECOM_CONTACT_CALLBACK_TOKEN=CONTACT_TOKEN,
        WECOM_CONTACT_CALLBACK_AES_KEY=CONTACT_KEY,
        DIRECTORY_SYNC_CONCURRENCY="4",
    )


class Mirror:
    """Read the mirror the way a test wants to compare it."""

    def __init__(self, app) -> None:
        self.app = app

    def _rows(self, model):
        with self.app.app_context():
            rows = db.session.scalars(sa.select(model)).all()
            db.session.expunge_all()
            return rows

    def people(self) -> dict[str, Person]:
        return {p.userid_folded: p for p in self._rows(Person)}

    def person(self, userid: str) -> Person | None:
        return self.people().get(userid.casefold())

    def departments(self) -> dict[int, Department]:
        return {d.id: d for d in self._rows(Department)}

    def tags(self) -> dict[int, Tag]:
        return {t.id: t for t in self._rows(Tag)}

    def tag_members(self) -> set[tuple[int, int]]:
        return {(m.tag_id, m.person_id) for m in self._rows(TagMember)}

    def changes(self) -> list[DirectoryChange]:
        return sorted(self._rows(DirectoryChange), key=lambda c: c.id)

    def outbox(self) -> list[DirectoryOutbox]:
        return sorted(self._rows(DirectoryOutbox), key=lambda c: c.id)

    def snapshot(self) -> dict:
        """Everything that describes the org (not ids or timestamps)."""
        return {
            "people": {
                f: (p.userid, p.name, tuple(p.departments), p.position, p.status, tuple(p.direct_leaders))
                for f, p in self.people().items()
            },
            "departments": {
                i: (d.name, d.parent_id, d.order, tuple(d.leaders), d.deleted_at is None)
                for i, d in self.departments().items()
            },  # fmt: skip
            "tags": {i: (t.name, tuple(t.party_ids), t.deleted_at is None) for i, t in self.tags().items()},
            "tag_members": self.tag_members(),
        }


@pytest.fixture
def mirror(tenant_app) -> Mirror:
    return Mirror(tenant_app)


def tenant_view(emulator) -> dict:
    """The tenant's directory in the mirror's terms (folded userid -> fields)."""
    out = {}
    for u in emulator.data.users.values():
        out[u.userid.casefold()] = (u.userid, u.name, tuple(u.departments), u.position, u.status)
    return out


class LivePlugin:
    """The plugin's web server on a real port (the tenant posts callbacks to it) and an in-process worker."""

    def __init__(self, app, emulator) -> None:
        import threading

        from werkzeug.serving import make_server

        from wecom_plugin.jobs.worker import Worker

        self.app = app
        self.emulator = emulator
        self.server = make_server("127.0.0.1", 0, app, threaded=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.worker = Worker(app)
        self.url = url = f"http://127.0.0.1:{self.server.port}/wecom/callback/contacts"
        emulator.admin("callbacks/receivers", receiver="contact_sync", url=url, token=CONTACT_TOKEN,
                       aes_key=CONTACT_KEY)  # fmt: skip

    def settle(self, rounds: int = 50) -> None:
        """Deliver every pending callback, then run the worker until no job is due."""
        self.emulator.admin("callbacks/drain", method="POST")
        for _ in range(rounds):
            if self.worker.run_once() == 0:
                return
        raise AssertionError("the worker did not become idle")

    def close(self) -> None:
        self.server.shutdown()
        self.thread.join()


@pytest.fixture
def live(tenant_app, emulator):
    emulator.flags(callback_timestamp="wall")  # the receiver checks freshness against the real clock
    plugin = LivePlugin(tenant_app, emulator)
    yield plugin
    plugin.close()
