"""The mirror kept by change_contact callbacks, end to end: the sandbox tenant changes its directory
and posts (ID-only, post-2022) callbacks to the plugin's live receiver; the worker re-reads and writes."""

from __future__ import annotations

import pytest

from wecom_plugin.services.directory_sync import run_sync

from .conftest import tenant_view


def _mirror_view(mirror) -> dict:
    return {f: (p.userid, p.name, tuple(p.departments), p.position, p.status) for f, p in mirror.people().items()}


def _live_tenant(emulator) -> dict:
    return tenant_view(emulator)


def _assert_converged(mirror, emulator, departed: set[str] = frozenset()) -> None:
    view = _mirror_view(mirror)
    for folded in departed:
        assert view.pop(folded)[4] == 5, folded
    assert view == _live_tenant(emulator)


def _some_member(emulator, n: int = 5):
    return [u for u in emulator.users() if u.departments and u.departments[0] != 1][n]


def _changes(emulator):
    """hire, move, rename, disable and delete in the tenant; returns (hired, renamed_to, departed) ids."""
    data = emulator.data
    dept = sorted(data.departments)[3]
    hired = emulator.admin("directory/hire", userid="NewHire01", name="新员工", department=[dept], position="专员")
    mover = _some_member(emulator, 1)
    target = sorted(data.departments)[4]
    emulator.admin("directory/move", userid=mover.userid, department=[target])
    renamed = _some_member(emulator, 2).userid
    emulator.admin("directory/rename", userid=renamed, new_userid="Renamed.Person")
    emulator.admin("directory/disable", userid=_some_member(emulator, 3).userid)
    leaver = _some_member(emulator, 4).userid
    emulator.admin("directory/depart", userid=leaver)
    return hired["userid"], renamed, leaver


def test_hire_move_rename_disable_and_delete_converge_through_callbacks(live, mirror, emulator, tenant_app):
    run_sync(tenant_app)
    before = mirror.people()
    hired, old_id, leaver = _changes(emulator)
    renamed_person = before[old_id.casefold()].id
    live.settle()
    _assert_converged(mirror, emulator, departed={leaver.casefold()})
    after = mirror.people()
    assert after["renamed.person"].id == renamed_person  # the rename kept the internal id
    assert old_id.casefold() not in after
    assert after[hired.casefold()].status == 1
    kinds = sorted(o.kind for o in mirror.outbox())
    assert kinds == ["departed", "disabled", "moved", "renamed"]  # the rename: the registry follows it
    # The next reconciliation has nothing left to fix.
    report = run_sync(tenant_app)
    assert report.state == "completed"
    assert all(report.stats[k] == 0 for k in ("hired", "updated", "renamed", "departed")), report.stats


def test_with_every_callback_dropped_reconciliation_converges(live, mirror, emulator, tenant_app):
    run_sync(tenant_app)
    emulator.admin("callbacks/faults", action="drop")
    old = mirror.people()
    hired, old_id, leaver = _changes(emulator)
    live.settle()
    assert _mirror_view(mirror) != _live_tenant(emulator)  # nothing arrived
    report = run_sync(tenant_app, trigger="schedule")
    assert report.state == "completed", report
    _assert_converged(mirror, emulator, departed={leaver.casefold()})
    # The unannounced rename is recognised: same person, not a departure plus a hire.
    assert mirror.person("Renamed.Person").id == old[old_id.casefold()].id
    assert report.stats["renamed"] == 1 and report.stats["departed"] == 1
    assert sorted(o.kind for o in mirror.outbox()) == ["departed", "disabled", "moved", "renamed"]


@pytest.mark.parametrize("fault", [{"action": "duplicate", "copies": 3}, {"action": "reorder", "release_after": 3}])
def test_duplicated_and_reordered_callbacks_reach_the_same_state(live, mirror, emulator, tenant_app, fault):
    run_sync(tenant_app)
    emulator.admin("callbacks/faults", **fault)
    hired, old_id, leaver = _changes(emulator)
    live.settle()
    _assert_converged(mirror, emulator, departed={leaver.casefold()})
    assert sorted(o.kind for o in mirror.outbox()) == ["departed", "disabled", "moved", "renamed"]


def test_a_stale_update_after_the_delete_does_not_bring_the_member_back(live, mirror, emulator, tenant_app):
    run_sync(tenant_app)
    member = _some_member(emulator, 6).userid
    # The update is held back and arrives after the delete (W9).
    emulator.admin("callbacks/faults", action="reorder", change_type="update_user", release_after=1)
    emulator.admin("directory/update", userid=member, position="新职务")
    emulator.admin("directory/depart", userid=member)
    live.settle()
    person = mirror.person(member)
    assert person.status == 5 and person.departed_at is not None
    assert [o.kind for o in mirror.outbox()] == ["departed"]


def test_a_rehire_under_the_same_id_is_not_undone_by_a_late_delete(live, mirror, emulator, tenant_app):
    run_sync(tenant_app)
    member = _some_member(emulator, 7)
    emulator.admin("callbacks/faults", action="delay", change_type="delete_user", seconds=1)
    emulator.admin("directory/depart", userid=member.userid)
    emulator.admin("directory/hire", userid=member.userid, name=member.name, department=list(member.departments))
    live.settle()
    emulator.admin("callbacks/drain", method="POST", timeout=5)
    live.settle()
    assert mirror.person(member.userid).status == 1
