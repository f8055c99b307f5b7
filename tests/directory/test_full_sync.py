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
