"""The switches that decide whether group governance may change anything in WeCom.

* **Mode** (``observe`` → ``dry_run`` → ``enforce``). ``observe``: checks report what they find,
  plan nothing. ``dry_run``: checks plan and record what they would change (``chat_change`` rows in
  state ``dry_run``), change nothing. ``enforce``: changes are applied. A new install starts in the
  mode ``GOVERNANCE_MODE`` names (``observe`` by default); an operator moves it on with
  ``wecom-plugin groups mode MODE``, which is audited and stored in ``governance_setting``, so every
  process sees it on its next read.
* **Kill switch**. On: no process sends another ``appchat/update`` or ``appchat/create``; work
  waits as it is (pending changes stay pending) until it is turned off. Audited both ways.

Every writer of chat membership reads :func:`effective` right before it calls WeCom, not once at
start: a kill switch thrown in the middle of a run stops the rest of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from wecom_plugin.models.base import insert_for, utcnow
from wecom_plugin.models.groups import GovernanceSetting
from wecom_plugin.services import audit
from wecom_plugin.settings import GOVERNANCE_MODES

SETTING = GovernanceSetting.__table__
MODE_KEY = "mode"
KILL_SWITCH_KEY = "kill_switch"


class GovernanceError(ValueError):
    """An operator's request that cannot be carried out; the message is Chinese first, then English."""


MODE_LABELS = {
    "observe": ("观察模式：只报告，不做任何更改", "observe: report only, change nothing"),
    "dry_run": ("演练模式：记录将做的更改，不实际执行", "dry run: record what would change, change nothing"),
    "enforce": ("执行模式：按规则实际调整群成员", "enforce: apply membership changes"),
}


@dataclass(frozen=True)
class Switches:
    """What governance may do right now."""

    mode: str
    kill_switch: bool
    mode_source: str  # "setting" (GOVERNANCE_MODE) or "operator" (wecom-plugin groups mode)

    @property
    def may_change_chats(self) -> bool:
        """True only in enforce mode with the kill switch off."""
        return self.mode == "enforce" and not self.kill_switch

    def as_dict(self) -> dict[str, Any]:
        zh, en = MODE_LABELS[self.mode]
        return {
            "mode": self.mode,
            "mode_source": self.mode_source,
            "kill_switch": self.kill_switch,
            "may_change_chats": self.may_change_chats,
            "mode_zh": zh,
            "mode_en": en,
        }


def effective(conn: sa.Connection | Session, default_mode: str) -> Switches:
    """The switches as stored, ``default_mode`` (``settings.governance_mode``) when no operator set one."""
    values = dict(conn.execute(sa.select(SETTING.c.key, SETTING.c.value)).all())
    mode = values.get(MODE_KEY)
    source = "operator"
    if mode not in GOVERNANCE_MODES:
        mode, source = default_mode, "setting"
    return Switches(mode=mode, kill_switch=bool(values.get(KILL_SWITCH_KEY, False)), mode_source=source)


def set_mode(session: Session, actor: str, mode: str, default_mode: str, reason: str | None = None) -> Switches:
    """Store the mode (audited ``governance.mode``); the caller commits."""
    mode = (mode or "").strip().lower()
    if mode not in GOVERNANCE_MODES:
        choices = ", ".join(GOVERNANCE_MODES)
        raise GovernanceError(f"模式必须是 {choices} 之一 / mode must be one of {choices}, got {mode!r}")
    before = effective(session, default_mode)
    _store(session, MODE_KEY, mode, actor)
    audit.record(
        actor, "governance.mode", target="governance", reason=reason,
        outcome="success" if before.mode != mode else "noop", detail={"before": before.mode, "after": mode},
        session=session,
    )  # fmt: skip
    return effective(session, default_mode)


def set_kill_switch(session: Session, actor: str, on: bool, default_mode: str, reason: str | None = None) -> Switches:
    """Throw or release the kill switch (audited ``governance.kill_switch``); the caller commits."""
    before = effective(session, default_mode)
    _store(session, KILL_SWITCH_KEY, bool(on), actor)
    audit.record(
        actor, "governance.kill_switch", target="governance", reason=reason,
        outcome="success" if before.kill_switch != bool(on) else "noop",
        detail={"before": before.kill_switch, "after": bool(on)}, session=session,
    )  # fmt: skip
    return effective(session, default_mode)


def _store(session: Session, key: str, value: Any, actor: str) -> None:
    now = utcnow()
    stmt = insert_for(session, SETTING).values(key=key, value=value, updated_by=actor[:128], updated_at=now)
    session.execute(
        stmt.on_conflict_do_update(
            index_elements=["key"], set_={"value": value, "updated_by": actor[:128], "updated_at": now}
        )
    )
