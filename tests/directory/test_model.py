"""A Hypothesis state machine over the sandbox tenant: random hires, departures, rehires, moves, renames,
disables and updates, with callbacks delivered, dropped, duplicated or reordered at random. After
quiescence and one reconciliation the mirror equals the tenant: every member as WeCom has them, and
everyone WeCom no longer has marked departed, never deleted."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test

from tests.support.emulator import SEED
from wecom_plugin.extensions import db
from wecom_plugin.services.directory_sync import run_sync

from .conftest import CONTACT_KEY, CONTACT_TOKEN, LivePlugin

TABLES = ("tag_member", "tag", "directory_outbox", "directory_change", "directory_sync", "person", "department",
          "job_step", "job", "callback_inbox", "alert")  # fmt: skip
NAMES = ["王芳", "李强", "张伟", "刘洋", "陈静", "杨磊", "赵敏", "黄勇"]
FAULTS = [None, {"action": "drop"}, {"action": "duplicate", "copies": 2}, {"action": "reorder", "release_after": 2}]


def _fresh(app, emulator, live: LivePlugin) -> None:
    emulator.tenant.reset(SEED)
    emulator.flags(callback_timestamp="wall")
    emulator.admin("callbacks/receivers", receiver="contact_sync", url=live.url, token=CONTACT_TOKEN,
                   aes_key=CONTACT_KEY)  # fmt: skip
    with app.app_context():
        for table in TABLES:
            db.session.execute(sa.text(f"DELETE FROM {table}"))  # noqa: S608 - fixed names
        db.session.commit()


@pytest.mark.timeout(600)
def test_the_mirror_converges_to_the_tenant_whatever_happens_to_the_callbacks(tenant_app, emulator, live):
    app = tenant_app

    def assert_mirrors_tenant() -> None:
        with app.app_context():
            rows = db.session.execute(
                sa.text("SELECT userid_folded, userid, name, departments, position, status FROM person")
            ).all()
        mirror = {r.userid_folded: r for r in rows}
        tenant = {u.userid.casefold(): u for u in emulator.data.users.values()}
        for folded, user in tenant.items():
            row = mirror.get(folded)
            assert row is not None, folded
            departments = row.departments if isinstance(row.departments, list) else json.loads(row.departments)
            assert (row.userid, row.name, departments, row.position, row.status) == (
                user.userid, user.name, list(user.departments), user.position, user.status
            ), folded  # fmt: skip
        for folded, row in mirror.items():
            if folded not in tenant:
                assert row.status == 5, folded

    class Directory(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            _fresh(app, emulator, live)
            run_sync(app)
            self.counter = 0
            self.departed: list[str] = []
            self.in_order = True  # no callback lost or reordered since the last reconciliation
            self.fault_free_from_now = True

        def _active(self) -> list[str]:
            return [u.userid for u in emulator.users() if u.departments and u.departments[0] != 1]

        def _departments(self) -> list[int]:
            return sorted(d for d in emulator.data.departments if d != 1)

        @rule(name=st.sampled_from(NAMES), dep=st.integers(0, 50), rehire=st.booleans())
        def hire(self, name, dep, rehire):
            if rehire and self.departed:
                userid = self.departed.pop()
            else:
                self.counter += 1
                userid = f"Hire{self.counter:03d}"
            deps = self._departments()
            emulator.admin("directory/hire", userid=userid, name=name, department=[deps[dep % len(deps)]])

        @precondition(lambda self: len(self.departed) < 6)  # stay under the brake: max(10, 5 %)
        @rule(i=st.integers(0, 1000))
        def depart(self, i):
            userid = self._active()[i % len(self._active())]
            emulator.admin("directory/depart", userid=userid)
            self.departed.append(userid)

        @rule(i=st.integers(0, 1000), disable=st.booleans())
        def disable_or_enable(self, i, disable):
            users = [u for u in emulator.users(status=None) if u.departments and u.departments[0] != 1]
            user = users[i % len(users)]
            emulator.admin("directory/disable" if disable else "directory/enable", userid=user.userid)

        @rule(i=st.integers(0, 1000), dep=st.integers(0, 50))
        def move(self, i, dep):
            deps = self._departments()
            emulator.admin("directory/move", userid=self._active()[i % len(self._active())],
                           department=[deps[dep % len(deps)]])  # fmt: skip

        @rule(i=st.integers(0, 1000))
        def rename(self, i):
            self.counter += 1
            emulator.admin("directory/rename", userid=self._active()[i % len(self._active())],
                           new_userid=f"Renamed{self.counter:03d}")  # fmt: skip

        @rule(i=st.integers(0, 1000), position=st.sampled_from(["店长", "经理", "专员", ""]))
        def update(self, i, position):
            emulator.admin("directory/update", userid=self._active()[i % len(self._active())], position=position)

        @rule(fault=st.sampled_from(FAULTS))
        def callbacks(self, fault):
            emulator.admin("callbacks/faults", method="DELETE")
            if fault is not None:
                emulator.admin("callbacks/faults", **fault)
            lossy = fault is not None and fault["action"] in ("drop", "reorder")
            self.fault_free_from_now = not lossy
            if lossy:
                self.in_order = False

        @rule()
        def settle(self):
            live.settle()
            if self.in_order:
                # Every callback arrived, in order (duplicates allowed): no reconciliation needed.
                assert_mirrors_tenant()

        @rule()
        def reconcile(self):
            live.settle()
            assert run_sync(app, trigger="schedule").state == "completed"
            self.in_order = self.fault_free_from_now
            assert_mirrors_tenant()

        @invariant()
        def nobody_is_ever_deleted_from_the_mirror(self):
            with app.app_context():
                count = db.session.execute(sa.text("SELECT count(*) FROM person")).scalar_one()
            assert count >= 60

        def teardown(self):
            emulator.admin("callbacks/faults", method="DELETE")
            live.settle()
            report = run_sync(app, trigger="schedule")
            assert report.state == "completed", report
            assert_mirrors_tenant()

    run_state_machine_as_test(
        Directory,
        settings=settings(
            max_examples=4,
            stateful_step_count=15,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
        ),
    )
