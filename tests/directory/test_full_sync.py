"""Full sync against the sandbox tenant over real HTTP, on SQLite and PostgreSQL."""

from __future__ import annotations

from wecom_plugin.services.directory_sync import run_sync

from .conftest import tenant_view


def _people_view(mirror) -> dict:
    return {f: (p.userid, p.name, tuple(p.departments), p.position, p.status) for f, p in mirror.people().items()}


def test_a_first_sync_mirrors_departments_members_and_tags(tenant_app, mirror, emulator):
    report = run_sync(tenant_app)
    assert report.state == "completed", report
    assert _people_view(mirror) == tenant_view(emulator)
    assert set(mirror.departments()) == set(emulator.data.departments)
    assert set(mirror.tags()) == set(emulator.data.tags)
    people = mirror.people()
    for tag in emulator.data.tags.values():
        members = {people[emulator.data.users[k].userid.casefold()].id for k in tag.users}
        assert {p for t, p in mirror.tag_members() if t == tag.tagid} == members
    assert report.stats["hired"] == len(emulator.data.users)
    # The walk is the lower bound of calls: department/list, user/list per department, tag/list, tag/get per tag.
    assert report.stats["api_calls"] == 1 + len(emulator.data.departments) + 1 + len(emulator.data.tags)


def test_a_second_sync_with_nothing_changed_writes_nothing_but_its_record(tenant_app, mirror, emulator):
    run_sync(tenant_app)
    before = (mirror.snapshot(), len(mirror.changes()))
    stamps = {f: p.updated_at for f, p in mirror.people().items()}
    report = run_sync(tenant_app)
    assert report.state == "completed"
    assert (mirror.snapshot(), len(mirror.changes())) == before
    assert {f: p.updated_at for f, p in mirror.people().items()} == stamps
    assert all(report.stats[k] == 0 for k in ("hired", "updated", "departed", "departments_changed", "tags_changed"))


def test_fingerprints_written_by_an_older_encoding_are_refreshed_quietly(tenant_app, mirror, emulator):
    """An upgrade that changes how fingerprints are computed makes every stored one differ; the
    next sync rewrites them without inventing history (no 'updated' rows, no outbox records)."""
    import sqlalchemy as sa

    from wecom_plugin.extensions import db
    from wecom_plugin.models.directory import Person

    run_sync(tenant_app)
    before = (mirror.snapshot(), len(mirror.changes()), len(mirror.outbox()))
    with tenant_app.app_context():
        db.session.execute(sa.update(Person).values(fingerprint="0" * 32))  # as if computed another way
        db.session.commit()
    report = run_sync(tenant_app)
    assert report.state == "completed" and report.stats["updated"] == 0
    assert (mirror.snapshot(), len(mirror.changes()), len(mirror.outbox())) == before
    assert all(p.fingerprint != "0" * 32 for p in mirror.people().values())
    third = run_sync(tenant_app)  # and from then on a re-sync finds nothing to write
    assert third.stats.get("stale_skipped", 0) == 0 and (mirror.snapshot(), len(mirror.changes())) == before[:2]
