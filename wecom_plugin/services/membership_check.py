"""The daily member check (每日检查): read every governed chat, compare it with its rule, plan the changes.

One run (:func:`run_check`) is one ``membership_check`` row and goes in two phases:

1. **Read and evaluate.** The directory mirror is loaded once (:mod:`.directory_view`). For every
   active group with a chat: ``appchat/get`` (read budget reserved in chunks), the ``chat_member``
   rows of that group refreshed, then :func:`~wecom_plugin.domain.membership.evaluate` against its
   rule, exemptions and name-rule flags. 86008 (a chat this app did not create) opens a
   :class:`ManualAction` and is never reported done; 86003/40050 (the chat is gone) raise an alert;
   any other failure of one chat is reported and the run goes on.
2. **Plan.** Per group, in the global mode (``observe`` → rows ``observed``; ``dry_run`` → rows
   ``dry_run``; ``enforce`` → rows ``pending``, each chat then queued for ``groups.apply``). A group's
   first check is a dry run whatever the mode (then ``first_check_at`` is set). When the owner is gone
   a new one is picked (:func:`~wecom_plugin.domain.membership.pick_owner`) and, in enforce mode,
   recorded in the registry (versioned) and planned as an ``owner`` change (which also adds them when
   they are not in the chat).

**The brake.** In enforce mode, if any chat would lose more than ``brake_limit(members)`` people, or
the run more than ``MEMBER_CHECK_BRAKE_TOTAL``, nothing pending is created: the run ends ``braked``
with one alert (``groups.brake``) and waits for :func:`confirm_check` (audited). The next run applies
the confirmed plan, re-evaluated; it refuses again when what it would remove beyond what was confirmed
would itself trip the brake.

**Name rule.** A member failing only the real-name rule is told first (enforce mode) and removed after
the grace period. The first telling is a ``chat_change`` row (action ``warn``, state ``observed``)
whose ``created_at`` is the start of the grace; the row is ``cancelled`` once the member is no longer
flagged (name fixed, or out of the chat), so a later failure starts a new grace.

**Notices** (enforce mode): each member told about their name gets one message; each admin gets one
digest per run listing all their chats (``groups.notify`` jobs, deduplicated per run).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from wecom_plugin.domain.directory import fold
from wecom_plugin.domain.membership import (
    DEFAULT_PLACEHOLDER_PATTERNS,
    REASONS,
    Evaluation,
    Exemption,
    Finding,
    GroupFacts,
    MembershipRule,
    RealNamePolicy,
    RuleError,
    brake_limit,
    desired_members,
    evaluate,
    pick_owner,
)
from wecom_plugin.errors import ConfigurationError, LeaseLostError, PluginError, RateLimitedError
from wecom_plugin.models.base import utcnow
from wecom_plugin.models.dbtime import db_now
from wecom_plugin.models.groups import (
    ChatChange,
    ChatMember,
    GovernedGroup,
    GroupExemption,
    ManualAction,
    MembershipCheck,
)
from wecom_plugin.services import audit
from wecom_plugin.services.alerts import raise_alert
from wecom_plugin.services.directory_view import PERSON, DirectoryView, load_view, mirror_problem
from wecom_plugin.services.governance_switches import effective
from wecom_plugin.wecom import errors as codes
from wecom_plugin.wecom.budget import BudgetExhausted, read_asks
from wecom_plugin.wecom.errors import WeComError

log = logging.getLogger("wecom_plugin.groups")

CHECK = MembershipCheck.__table__
CHANGE = ChatChange.__table__
MEMBER = ChatMember.__table__
GROUP = GovernedGroup.__table__
EXEMPTION = GroupExemption.__table__
MANUAL = ManualAction.__table__

ACTOR = "system:member-check"
BRAKE_ALERT = "groups.brake"
ABANDONED_AFTER_SECONDS = 6 * 3600  # a check "running" longer than this lost its process (-> abandoned)
CONFIRMATION_TTL_SECONDS = 24 * 3600  # a brake confirmation not used within a day expires
MIRROR_ALERT = "groups.mirror_untrusted"
READ_CHUNK = 200  # appchat/get reads reserved from the budget at a time
GONE_CODES = (codes.APPCHAT_NOT_FOUND, codes.CHATID_NOT_FOUND)
OWNER_REASON = "owner_gone"  # chat_change.reason of an owner change planned by a check
#: An offboarding finished this recently (and no rehire since) still marks a leaver: a check never
#: adds them back, nobody makes them owner.
OFFBOARDED_DAYS = 30


class CheckBusy(Exception):
    """Another member check is running."""


class CheckError(ValueError):
    """An operator's request that cannot be carried out (message Chinese first, then English)."""


@dataclass
class CheckReport:
    """What one run found and planned (also stored on ``membership_check.report``)."""

    check_id: int
    state: str
    mode: str
    trigger: str
    group_id: int | None = None
    stats: dict[str, Any] = field(default_factory=dict)
    groups: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    confirmed_check: int | None = None

    @property
    def braked(self) -> bool:
        return self.state == "braked"

    def as_dict(self) -> dict[str, Any]:
        return {
            "check_id": self.check_id,
            "state": self.state,
            "mode": self.mode,
            "trigger": self.trigger,
            "group_id": self.group_id,
            "confirmed_check": self.confirmed_check,
            "stats": self.stats,
            "groups": self.groups,
            "error": self.error,
        }


def policy_for(settings: Any) -> RealNamePolicy:
    """The real-name policy the settings describe (empty patterns: the defaults)."""
    patterns = tuple(settings.real_name_patterns or ()) or DEFAULT_PLACEHOLDER_PATTERNS
    return RealNamePolicy(patterns, timedelta(days=settings.real_name_grace_days))


def _engine(app: Any) -> sa.Engine:
    from wecom_plugin.extensions import db

    with app.app_context():
        return db.engine


def _read(engine: sa.Engine) -> sa.Connection:
    return engine.connect().execution_options(sqlite_begin="DEFERRED")


def finding_view(f: Finding, view: DirectoryView | None) -> dict[str, Any]:
    zh, en = REASONS.get(f.reason, (f.reason, f.reason))
    out = {"userid": f.userid, "reason": f.reason, "reason_zh": zh, "reason_en": en}
    if f.detail:
        out["detail"] = f.detail
    if view is not None:
        out["name"] = view.name(f.userid)
    return out


@dataclass
class _Plan:
    """One group's part of a run."""

    group: Any  # governed_group row
    entry: dict[str, Any]
    mode: str = "observe"  # observe | dry_run | enforce (this group's)
    current: list[str] = field(default_factory=list)
    chat_owner: str = ""
    facts: GroupFacts | None = None
    evaluation: Evaluation | None = None
    removals: list[Finding] = field(default_factory=list)
    additions: list[Finding] = field(default_factory=list)
    new_owner: str | None = None
    open_warns: dict[str, Any] = field(default_factory=dict)  # folded -> warn row

    @property
    def evaluated(self) -> bool:
        return self.evaluation is not None


def group_facts(group: Any, exemptions: list[Exemption], flagged: dict[str, datetime]) -> GroupFacts:
    return GroupFacts(
        rule=MembershipRule.from_doc(group.rule or None),
        owner=group.owner or "",
        admins=tuple(a for a in (group.admins or ()) if a),
        exemptions=tuple(exemptions),
        name_flagged_since=flagged,
    )


def _exemptions(conn: sa.Connection, group_ids: list[int], now: datetime) -> dict[int, list[Exemption]]:
    out: dict[int, list[Exemption]] = {}
    if not group_ids:
        return out
    rows = conn.execute(
        sa.select(EXEMPTION.c.group_id, EXEMPTION.c.userid, EXEMPTION.c.reason, EXEMPTION.c.expires_at).where(
            EXEMPTION.c.revoked_at.is_(None), EXEMPTION.c.expires_at > now
        )
    )
    wanted = set(group_ids)
    for gid, userid, reason, expires in rows:
        if gid in wanted:
            out.setdefault(gid, []).append(Exemption(userid, reason or "", expires))
    return out


def _open_warns(conn: sa.Connection, group_ids: list[int]) -> dict[int, dict[str, Any]]:
    out: dict[int, dict[str, Any]] = {}
    if not group_ids:
        return out
    wanted = set(group_ids)
    rows = conn.execute(
        sa.select(CHANGE.c.id, CHANGE.c.group_id, CHANGE.c.userid_folded, CHANGE.c.created_at)
        .where(CHANGE.c.action == "warn", CHANGE.c.state == "observed")
        .order_by(CHANGE.c.created_at, CHANGE.c.id)
    )
    for row in rows:
        if row.group_id in wanted:
            out.setdefault(row.group_id, {}).setdefault(row.userid_folded, row)
    return out


# --- the run ------------------------------------------------------------------------------------
def run_check(
    app: Any,
    *,
    trigger: str,
    group_id: int | None = None,
    dry_run: bool = False,
    confirmed_check: int | None = None,
    guard: Callable[[], None] | None = None,
) -> CheckReport:
    """Run the member check over every active group (or one) and return its report.

    Args:
        trigger: recorded on the run (schedule, cli, confirm...).
        group_id: only this group.
        dry_run: record what would change (``dry_run`` rows) even in enforce mode.
        confirmed_check: a braked run a person confirmed (default: the newest confirmed one).
        guard: a job's lease check, run before every WeCom call.

    Raises:
        CheckBusy: another check is running. RateLimitedError: the read budget is spent (the run is
        recorded ``failed``; a job is rescheduled).
    """
    settings = app.extensions["wecom_settings"]
    engine = _engine(app)
    run = _Run(app, engine, settings, trigger=trigger, group_id=group_id, dry_run=dry_run, guard=guard)
    with app.app_context():  # the registry service reads its settings from the current app
        # Renames the registry has not followed yet first: the renamed member would be a stranger to
        # the rule (departures are left to their offboarding, which the check already accounts for).
        from wecom_plugin.services.offboarding import consume_outbox

        consume_outbox(engine, "groups.check", kinds=("renamed",))
        return run.execute(confirmed_check)


class _Run:
    def __init__(self, app: Any, engine: sa.Engine, settings: Any, *, trigger, group_id, dry_run, guard) -> None:
        self.app = app
        self.engine = engine
        self.settings = settings
        self.trigger = str(trigger or "cli")[:32]
        self.group_id = group_id
        self.dry_run = dry_run
        self.guard = guard
        self.policy = policy_for(settings)
        self.check_id = 0
        self.mode = "observe"
        self.stats: dict[str, Any] = {
            "groups": 0,
            "chats_read": 0,
            "with_differences": 0,
            "removals": 0,
            "additions": 0,
            "warnings": 0,
            "owner_rehomed": 0,
            "pending": 0,
            "manual": 0,
            "errors": 0,
            "first_checks": 0,
        }
        self.view: DirectoryView | None = None
        self.mirror_problem: str | None = None
        self.mirror_empty = False
        self.held_removals = 0
        self.offboarded: set[str] = set()  # folded: open or recent offboardings (never added, never owner)
        self.offboarding_rows: dict[int, set[str]] = {}  # group -> folded userids with a pending offboarding row
        self.client: Any = None
        self._reserved = 0
        self.confirmed: Any = None
        self.now = utcnow()

    # ---- lifecycle -----------------------------------------------------------------------------
    def execute(self, confirmed_check: int | None) -> CheckReport:
        self._start()
        plans: list[_Plan] = []
        try:
            self.confirmed = self._confirmed(confirmed_check)
            started = time.perf_counter()
            self.view = load_view(self.engine)
            self.stats["seconds_directory"] = round(time.perf_counter() - started, 3)
            plans = self._read_all()
            if self.held_removals:
                self._raise_mirror_alert()
            braked, brake = self._brake(plans)
            self._plan_all(plans, braked)
            if braked:
                self._raise_brake(brake)
            self._notify(plans, braked)
        except RateLimitedError as exc:
            self._finish("failed", plans, error=f"rate limited: {exc}")
            raise
        except BaseException as exc:  # noqa: BLE001 - recorded, then re-raised (Ctrl-C included)
            self._finish("failed", plans, error=f"{type(exc).__name__}: {exc}"[:2000])
            raise
        finally:
            if self.client is not None:
                self.client.close()
        return self._finish("braked" if braked else "completed", plans, brake=brake)

    def _start(self) -> None:
        try:
            self._insert_running()
        except sa.exc.IntegrityError as exc:  # uq_membership_check_running: another check won the race
            raise CheckBusy("another member check is running / 另一次成员检查正在进行") from exc

    def _insert_running(self) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                sa.update(CHECK)
                .where(
                    CHECK.c.state == "running",
                    CHECK.c.started_at < utcnow() - timedelta(seconds=ABANDONED_AFTER_SECONDS),
                )
                .values(state="abandoned", error="abandoned: its process stopped", finished_at=utcnow())
            )
            other = conn.execute(
                sa.select(CHECK.c.id, CHECK.c.started_at).where(CHECK.c.state == "running").limit(1)
            ).first()
            if other is not None:
                raise CheckBusy(
                    f"member check #{other.id} (started {other.started_at:%Y-%m-%d %H:%M:%S}Z) is still running"
                )
            switches = effective(conn, self.settings.governance_mode)
            self.mode = switches.mode
            if self.dry_run and self.mode == "enforce":
                self.mode = "dry_run"
            self.stats["kill_switch"] = switches.kill_switch
            self.check_id = conn.execute(
                sa.insert(CHECK)
                .values(trigger=self.trigger, mode=self.mode, group_id=self.group_id, state="running",
                        started_at=utcnow(), stats={}, report={})
                .returning(CHECK.c.id)
            ).scalar_one()  # fmt: skip

    def _finish(
        self, state: str, plans: list[_Plan], *, error: str | None = None, brake: dict | None = None
    ) -> CheckReport:
        groups = [p.entry for p in plans]
        report = {"groups": groups}
        if brake:
            report["brake"] = brake
        if self.confirmed is not None:
            report["confirmed_check"] = self.confirmed.id
        with self.engine.begin() as conn:
            conn.execute(
                sa.update(CHECK)
                .where(CHECK.c.id == self.check_id)
                .values(state=state, finished_at=utcnow(), stats=self.stats, report=report,
                        error=(error or None) and error[:2000])
            )  # fmt: skip
            if state == "completed" and self.confirmed is not None and self.mode == "enforce":
                # Used up by the run that applied it, whatever its scope: never a standing licence.
                conn.execute(
                    sa.update(CHECK)
                    .where(CHECK.c.id == self.confirmed.id, CHECK.c.state == "confirmed")
                    .values(state="applied")
                )
        with Session(self.engine) as session, session.begin():
            audit.record(
                ACTOR, "groups.check", target=f"membership_check:{self.check_id}", reason=error,
                outcome="failure" if state == "failed" else ("dry_run" if self.mode != "enforce" else "success"),
                detail={"state": state, "mode": self.mode, "trigger": self.trigger, "stats": self.stats},
                session=session,
            )  # fmt: skip
        log.info("member check #%s %s (%s): %s", self.check_id, state, self.mode, self.stats)
        return CheckReport(
            self.check_id, state, self.mode, self.trigger, self.group_id, dict(self.stats), groups, error,
            self.confirmed.id if self.confirmed is not None else None,
        )  # fmt: skip

    def _confirmed(self, confirmed_check: int | None) -> Any:
        if self.mode != "enforce":
            return None
        with _read(self.engine) as conn:
            since = db_now(conn) - timedelta(seconds=CONFIRMATION_TTL_SECONDS)
            query = sa.select(CHECK).where(CHECK.c.state == "confirmed", CHECK.c.confirmed_at >= since)
            if confirmed_check is not None:
                query = query.where(CHECK.c.id == confirmed_check)
            return conn.execute(query.order_by(CHECK.c.id.desc()).limit(1)).first()

    # ---- phase 1: read and evaluate ------------------------------------------------------------
    def _groups(self, conn: sa.Connection) -> list[Any]:
        query = sa.select(GROUP).where(GROUP.c.status == "active", GROUP.c.chatid.is_not(None)).order_by(GROUP.c.id)
        if self.group_id is not None:
            query = query.where(GROUP.c.id == self.group_id)
        return list(conn.execute(query))

    def _read_all(self) -> list[_Plan]:
        from wecom_plugin.services.wecom import client_for

        with _read(self.engine) as conn:
            groups = self._groups(conn)
            now = db_now(conn)
            self.mirror_problem = mirror_problem(conn, self.settings.directory_sync_minutes, now)
            self.mirror_empty = conn.execute(sa.select(PERSON.c.userid_folded).limit(1)).first() is None
            ids = [g.id for g in groups]
            exemptions = _exemptions(conn, ids, now)
            warns = _open_warns(conn, ids)
            self.offboarded = offboarded(conn, recent_days=OFFBOARDED_DAYS)
            for gid, folded in conn.execute(
                sa.select(CHANGE.c.group_id, CHANGE.c.userid_folded).where(
                    CHANGE.c.state == "pending", CHANGE.c.source == "offboarding"
                )
            ):
                self.offboarding_rows.setdefault(gid, set()).add(folded)
        self.now = now
        self.stats["groups"] = len(groups)
        if not groups:
            return []
        self.client = client_for(self.app, guard=self.guard)
        plans: list[_Plan] = []
        started = time.perf_counter()
        cpu = 0.0
        for index, group in enumerate(groups):
            plan = _Plan(group, _entry(group))
            plan.open_warns = warns.get(group.id, {})
            plan.mode = self._group_mode(group)
            plans.append(plan)
            chat = self._read_chat(plan, len(groups) - index)
            if chat is None:
                continue
            self._refresh_members(group.id, plan.current)
            t0 = time.process_time()
            self._evaluate(plan, exemptions.get(group.id, []))
            cpu += time.process_time() - t0
        self.stats["seconds_reading"] = round(time.perf_counter() - started, 3)
        self.stats["cpu_seconds_evaluating"] = round(cpu, 3)
        return plans

    def _group_mode(self, group: Any) -> str:
        if self.mode == "observe":
            return "observe"
        if self.mode == "dry_run" or group.first_check_at is None:
            return "dry_run"
        return "enforce"

    def _reserve_read(self, upcoming: int) -> None:
        if self._reserved > 0:
            self._reserved -= 1
            return
        budget = getattr(self.client, "budget", None)
        chunk = max(1, min(READ_CHUNK, upcoming))
        if budget is not None:
            grant = budget.acquire_many(read_asks("appchat/get", chunk))
            if not grant.ok:
                raise BudgetExhausted(grant, "appchat/get")
        self._reserved = chunk - 1

    def _read_chat(self, plan: _Plan, upcoming: int) -> dict[str, Any] | None:
        from wecom_plugin.wecom.api import appchat

        group = plan.group
        self._reserve_read(upcoming)
        try:
            chat = appchat.get(self.client, group.chatid)
        except RateLimitedError:
            raise
        except WeComError as exc:
            if exc.errcode == codes.APPCHAT_NOT_CREATOR:
                plan.entry["status"] = "manual"
                plan.entry["error"] = exc.errmsg or codes.describe(exc.errcode)
                self.stats["manual"] += 1
                with Session(self.engine) as session, session.begin():
                    not_created_by_app(session, group, source="check", check_id=self.check_id)
                return None
            if exc.errcode in GONE_CODES:
                plan.entry["status"] = "chat_gone"
                plan.entry["error"] = codes.describe(exc.errcode)
                self.stats["errors"] += 1
                with self.engine.begin() as conn:
                    chat_gone_alert(conn, group, exc.errcode)
                return None
            return self._read_failed(plan, exc)
        except PluginError as exc:  # a network failure, a lost token...: reported, the run goes on
            if isinstance(exc, LeaseLostError | ConfigurationError):
                raise
            return self._read_failed(plan, exc)
        self.stats["chats_read"] += 1
        plan.current = [u for u in chat.get("userlist") or () if isinstance(u, str) and u]
        plan.chat_owner = str(chat.get("owner") or "")
        plan.entry["members"] = len({fold(u) for u in plan.current})
        plan.entry["chat_owner"] = plan.chat_owner
        return chat

    def _read_failed(self, plan: _Plan, exc: BaseException) -> None:
        plan.entry["status"] = "error"
        plan.entry["error"] = f"{type(exc).__name__}: {exc}"[:500]
        self.stats["errors"] += 1
        return None

    def _refresh_members(self, group_id: int, current: list[str]) -> None:
        refresh_chat_members(self.engine, group_id, current)

    def _evaluate(self, plan: _Plan, exemptions: list[Exemption]) -> None:
        assert self.view is not None
        flagged = {f: row.created_at for f, row in plan.open_warns.items()}
        try:
            facts = group_facts(plan.group, exemptions, flagged)
        except RuleError as exc:
            plan.entry["status"] = "rule_error"
            plan.entry["error"] = str(exc)[:500]
            self.stats["errors"] += 1
            return
        evaluation = evaluate(facts, plan.current, self.view.directory, self.policy, self.now)
        plan.facts, plan.evaluation = facts, evaluation
        plan.removals = list(evaluation.removals)
        plan.additions = list(evaluation.additions)
        if self.mirror_problem:
            # "Not in the mirror" is only certain when the mirror is complete and fresh; an empty
            # mirror says nothing about anyone.
            held = [f for f in plan.removals if self.mirror_empty or f.reason == "not_in_directory"]
            if held:
                plan.removals = [f for f in plan.removals if f not in held]
                plan.entry["held"] = [
                    {**finding_view(f, self.view), "held": "mirror not trustworthy", "why": self.mirror_problem}
                    for f in held
                ]
                self.held_removals += len(held)
        self._hold_offboarded(plan)
        if evaluation.owner_gone:
            staying = {fold(u) for u in plan.current} - {fold(f.userid) for f in plan.removals}
            staying |= {fold(f.userid) for f in plan.additions}
            leaders = self.view.department_leaders(plan.group.department_id)
            leaving = self.offboarded | self.offboarding_rows.get(plan.group.id, set())
            plan.new_owner = pick_owner(facts, staying, self.view.directory, leaders, self.policy, exclude=leaving)
            if plan.new_owner:
                chosen = fold(plan.new_owner)
                # The new owner is always a member: never removed, added by the owner change itself.
                plan.removals = [f for f in plan.removals if fold(f.userid) != chosen]
                plan.additions = [f for f in plan.additions if fold(f.userid) != chosen]
        entry = plan.entry
        entry.update(
            status="ok",
            members=evaluation.chat_size,
            brake_limit=brake_limit(evaluation.chat_size),
            removals=[finding_view(f, self.view) for f in plan.removals],
            additions=[finding_view(f, self.view) for f in plan.additions],
            warnings=[finding_view(f, self.view) for f in evaluation.warnings],
            exempted=[finding_view(f, self.view) for f in evaluation.exempted],
            counts=evaluation.counts(),
        )
        entry["owner"] = {
            "registered": plan.group.owner or "",
            "chat": plan.chat_owner,
            "gone": evaluation.owner_gone,
            "new": plan.new_owner,
        }
        if evaluation.owner_gone and not plan.new_owner:
            entry["owner"]["problem"] = "no eligible owner: a person must choose one"
        self.stats["removals"] += len(plan.removals)
        self.stats["additions"] += len(plan.additions)
        self.stats["warnings"] += len(evaluation.warnings)
        if plan.removals or plan.additions or plan.new_owner:
            self.stats["with_differences"] += 1

    def _hold_offboarded(self, plan: _Plan) -> None:
        """Offboarded people (open, or finished recently and not rehired) are never added back by a
        check; a change conflicting with a pending offboarding row of this chat is never planned
        (the offboarding's removal is the one that goes)."""
        assert self.view is not None
        pending = self.offboarding_rows.get(plan.group.id, set())
        held: list[dict[str, Any]] = []
        keep: list[Finding] = []
        for f in plan.additions:
            folded = fold(f.userid)
            if folded in self.offboarded or folded in pending:
                held.append({**finding_view(f, self.view), "held": "offboarded"})
            else:
                keep.append(f)
        plan.additions = keep
        keep = []
        for f in plan.removals:
            if fold(f.userid) in pending:
                held.append({**finding_view(f, self.view), "held": "offboarding pending"})
            else:
                keep.append(f)
        plan.removals = keep
        if held:
            plan.entry.setdefault("held", []).extend(held)
            self.stats["held_offboarded"] = self.stats.get("held_offboarded", 0) + len(held)

    # ---- the brake -----------------------------------------------------------------------------
    def _brake(self, plans: list[_Plan]) -> tuple[bool, dict[str, Any] | None]:
        """Would this run (its enforce groups) remove too many people?"""
        allowed: dict[str, set[str]] = {}
        if self.confirmed is not None:
            for g in (self.confirmed.report or {}).get("groups", []):
                allowed[str(g.get("group_id"))] = {fold(r["userid"]) for r in g.get("removals", [])}
        over: list[dict[str, Any]] = []
        total = 0
        for plan in plans:
            if plan.mode != "enforce" or not plan.evaluated:
                continue
            confirmed = allowed.get(str(plan.group.id), set())
            extra = [f for f in plan.removals if fold(f.userid) not in confirmed]
            limit = brake_limit(plan.evaluation.chat_size)
            total += len(extra)
            if len(extra) > limit:
                plan.entry["braked"] = True
                over.append(
                    {
                        "group_id": plan.group.id,
                        "name": plan.group.name,
                        "removals": len(plan.removals),
                        "unconfirmed": len(extra),
                        "limit": limit,
                        "members": plan.evaluation.chat_size,
                    }
                )
        total_limit = self.settings.member_check_brake_total
        if not over and total <= total_limit:
            return False, None
        return True, {"chats": over, "total": total, "total_limit": total_limit}

    def _raise_mirror_alert(self) -> None:
        self.stats["held_mirror_untrusted"] = self.held_removals
        with self.engine.begin() as conn:
            raise_alert(
                MIRROR_ALERT,
                title_zh=f"成员检查暂缓移出 {self.held_removals} 人：通讯录镜像不可信（{self.mirror_problem}）",
                title_en=f"Member check #{self.check_id} held {self.held_removals} removal(s): the directory mirror "
                f"is not trustworthy ({self.mirror_problem})",
                detail={"check_id": self.check_id, "held": self.held_removals, "why": self.mirror_problem},
                session=conn,
            )

    def _raise_brake(self, brake: dict[str, Any]) -> None:
        chats = "、".join(f"{c['name']}（{c['removals']}人，上限{c['limit']}）" for c in brake["chats"][:5])
        zh = f"群成员检查已暂停：本次将移出 {brake['total']} 人"
        zh += f"，超出上限的群：{chats}" if chats else f"（总上限 {brake['total_limit']}）"
        zh += f"；核实后请执行 wecom-plugin groups confirm {self.check_id} --by 姓名"
        en = (
            f"Member check #{self.check_id} braked: it would remove {brake['total']} people "
            f"({len(brake['chats'])} chats over their limit, run limit {brake['total_limit']}); nothing was changed. "
            f"If that is right, run `wecom-plugin groups confirm {self.check_id} --by NAME`"
        )
        with self.engine.begin() as conn:
            raise_alert(BRAKE_ALERT, title_zh=zh, title_en=en, severity="critical",
                        detail={"check_id": self.check_id, **brake}, session=conn)  # fmt: skip

    # ---- phase 2: plan -------------------------------------------------------------------------
    def _plan_all(self, plans: list[_Plan], braked: bool) -> None:
        for plan in plans:
            if not plan.evaluated:
                continue
            plan.entry["mode"] = plan.mode
            if plan.mode == "enforce" and braked:
                plan.entry["planned"] = "braked"
                continue
            with Session(self.engine, expire_on_commit=False) as session, session.begin():
                if plan.mode == "enforce":
                    self._plan_enforce(session, plan)
                else:
                    self._plan_record(session, plan)

    def _row(self, plan: _Plan, userid: str, action: str, reason: str, detail: str, state: str) -> dict[str, Any]:
        return {
            "group_id": plan.group.id, "userid": userid, "userid_folded": fold(userid), "action": action,
            "reason": reason, "detail": detail or "", "source": "check", "priority": 1, "run_id": self.check_id,
            "state": state, "attempts": 0, "created_at": self.now,
        }  # fmt: skip

    def _planned_rows(self, plan: _Plan, state: str) -> list[dict[str, Any]]:
        rows = [self._row(plan, f.userid, "remove", f.reason, f.detail, state) for f in plan.removals]
        rows += [self._row(plan, f.userid, "add", f.reason, f.detail, state) for f in plan.additions]
        if plan.new_owner:
            detail = f"previous owner: {plan.group.owner or '-'}"
            rows.append(self._row(plan, plan.new_owner, "owner", OWNER_REASON, detail, state))
        return rows

    def _plan_record(self, session: Session, plan: _Plan) -> None:
        state = "observed" if plan.mode == "observe" else "dry_run"
        rows = self._planned_rows(plan, state)
        if rows:
            session.execute(sa.insert(CHANGE), rows)
        plan.entry["planned"] = state
        if plan.mode == "dry_run" and plan.group.first_check_at is None:
            session.execute(sa.update(GROUP).where(GROUP.c.id == plan.group.id).values(first_check_at=self.now))
            plan.entry["first_check"] = True
            self.stats["first_checks"] += 1

    def _plan_enforce(self, session: Session, plan: _Plan) -> None:
        gid = plan.group.id
        from wecom_plugin.services.chat_changes import claimed_groups

        if gid in claimed_groups(session):
            # An apply holds this chat: its pending rows are left alone (it re-evaluates them itself).
            plan.entry["planned"] = "busy: an apply holds this chat"
            return
        wanted = {(fold(r["userid"]), r["action"]): r for r in self._planned_rows(plan, "pending")}
        pending = session.execute(
            sa.select(CHANGE.c.id, CHANGE.c.userid_folded, CHANGE.c.action, CHANGE.c.source).where(
                CHANGE.c.group_id == gid, CHANGE.c.state == "pending"
            )
        ).all()
        taken: set[str] = set()
        for row in pending:
            if row.source == "check" and (row.userid_folded, row.action) not in wanted:
                session.execute(
                    sa.update(CHANGE).where(CHANGE.c.id == row.id, CHANGE.c.state == "pending")
                    .values(state="cancelled", error="no longer needed at the next check")
                )  # fmt: skip
                audit.record(ACTOR, "groups.change.cancel", target=f"chat_change:{row.id}",
                             reason="no longer needed at the next check", session=session)  # fmt: skip
                continue
            taken.add(row.userid_folded)
        new = [r for (f, _a), r in wanted.items() if f not in taken]
        if new:
            session.execute(sa.insert(CHANGE), new)
        self.stats["pending"] += len(new)
        plan.entry["planned"] = "pending"
        plan.entry["new_changes"] = len(new)
        if plan.new_owner and fold(plan.new_owner) != fold(plan.group.owner or ""):
            self._rehome(session, plan)
        self._record_warnings(session, plan)
        if new or pending:
            from wecom_plugin.runtime.queue import enqueue

            enqueue("groups.apply", {"group_id": gid, "check_id": self.check_id},
                    dedupe_key=f"groups.apply:{gid}:check:{self.check_id}", session=session)  # fmt: skip
            plan.entry["apply_queued"] = True

    def _rehome(self, session: Session, plan: _Plan) -> None:
        old = plan.group.owner or ""
        why = plan.entry.get("owner", {})
        reason = (
            f"群主 {old or '-'} 已不能担任群主，改由 {plan.new_owner} 担任 / "
            f"owner {old or '-'} is gone; {plan.new_owner} takes over"
        )
        try:
            from wecom_plugin.services import group_registry
        except ModuleNotFoundError as exc:  # the registry service is deployed separately
            if exc.name != "wecom_plugin.services.group_registry":
                raise
            log.warning("group %s: owner re-homed in the chat only (no registry service)", plan.group.id)
            why["registry"] = "not recorded: registry service missing"
            return
        try:
            with session.begin_nested():
                group_registry.update_group(
                    session,
                    plan.group.id,
                    {"owner": plan.new_owner},
                    actor=ACTOR,
                    action="owner_rehomed",
                    reason=reason,
                )
        except ValueError as exc:  # RegistryError: the registry refused (the chat change still goes ahead)
            why["registry"] = f"refused: {exc}"[:500]
            return
        self.stats["owner_rehomed"] += 1

    def _record_warnings(self, session: Session, plan: _Plan) -> None:
        """Open a warn row for each newly flagged member; close those no longer flagged."""
        assert plan.evaluation is not None
        warned = {fold(f.userid): f for f in plan.evaluation.warnings}
        removed_for_name = {fold(f.userid) for f in plan.removals if f.reason == "not_real_name"}
        for folded, row in plan.open_warns.items():
            if folded not in warned and folded not in removed_for_name:
                session.execute(
                    sa.update(CHANGE).where(CHANGE.c.id == row.id, CHANGE.c.state == "observed")
                    .values(state="cancelled", error="no longer flagged")
                )  # fmt: skip
        new = [
            self._row(plan, f.userid, "warn", f.reason, f.detail, "observed")
            for folded, f in warned.items()
            if folded not in plan.open_warns
        ]
        if new:
            ids = session.execute(sa.insert(CHANGE).returning(CHANGE.c.id), new).scalars().all()
            plan.entry["warned_now"] = len(ids)
            plan.entry["_warn_ids"] = list(ids)

    # ---- notices -------------------------------------------------------------------------------
    def _notify(self, plans: list[_Plan], braked: bool) -> None:
        if self.mode != "enforce":
            return
        from wecom_plugin.runtime.queue import enqueue

        warn_ids = [i for p in plans for i in p.entry.pop("_warn_ids", [])]
        digest = any(
            p.entry.get("planned") in ("pending", "dry_run")
            and (p.entry.get("removals") or p.entry.get("additions") or (p.entry.get("owner") or {}).get("new"))
            for p in plans
        )
        if not (warn_ids or digest):
            return
        with self.engine.begin() as conn:
            if warn_ids:
                enqueue("groups.notify", {"kind": "warn", "change_ids": warn_ids},
                        dedupe_key=f"groups.notify:warn:{self.check_id}", session=conn)  # fmt: skip
            if digest:
                enqueue("groups.notify", {"kind": "digest", "check_id": self.check_id},
                        dedupe_key=f"groups.notify:digest:{self.check_id}", session=conn)  # fmt: skip


def _entry(group: Any) -> dict[str, Any]:
    return {
        "group_id": group.id,
        "name": group.name,
        "chatid": group.chatid,
        "status": "pending",
        "admins": list(group.admins or ()),
        "owner_registered": group.owner or "",
    }


# --- shared with the executor -------------------------------------------------------------------
def refresh_chat_members(engine_or_conn: Any, group_id: int, current: list[str]) -> None:
    """Make ``chat_member`` of ``group_id`` hold exactly ``current`` (writes only the differences)."""
    wanted: dict[str, str] = {}
    for u in current:
        wanted.setdefault(fold(u), u)

    def work(conn: Any) -> None:
        have = dict(
            conn.execute(sa.select(MEMBER.c.userid_folded, MEMBER.c.userid).where(MEMBER.c.group_id == group_id)).all()
        )
        gone = [f for f in have if f not in wanted]
        for start in range(0, len(gone), 500):
            conn.execute(
                sa.delete(MEMBER).where(
                    MEMBER.c.group_id == group_id, MEMBER.c.userid_folded.in_(gone[start : start + 500])
                )
            )
        now = utcnow()
        new = [
            {"group_id": group_id, "userid_folded": f, "userid": u, "seen_at": now}
            for f, u in wanted.items()
            if f not in have
        ]
        if new:
            conn.execute(sa.insert(MEMBER), new)
        respelled = [(f, u) for f, u in wanted.items() if f in have and have[f] != u]
        for f, u in respelled:
            conn.execute(
                sa.update(MEMBER)
                .where(MEMBER.c.group_id == group_id, MEMBER.c.userid_folded == f)
                .values(userid=u, seen_at=now)
            )

    if isinstance(engine_or_conn, sa.Engine):
        with engine_or_conn.begin() as conn:
            work(conn)
    else:
        work(engine_or_conn)


def offboarded(conn: Any, *, recent_days: int | None = None) -> set[str]:
    """Folded userids with an open offboarding (pending, running, or scheduled and due now); with
    ``recent_days``, also those finished (done/partial/failed) within that many days and not
    reactivated (rehired) since."""
    from wecom_plugin.models.directory import DirectoryOutbox
    from wecom_plugin.models.groups import Offboarding

    off = Offboarding.__table__
    outbox = DirectoryOutbox.__table__
    now = db_now(conn)
    open_ = sa.or_(
        off.c.state.in_(("pending", "running")),
        sa.and_(off.c.state == "scheduled", off.c.effective_at <= now),
    )
    out = set(conn.execute(sa.select(off.c.userid_folded).where(open_)).scalars())
    if recent_days:
        since = utcnow() - timedelta(days=recent_days)
        finished = conn.execute(
            sa.select(off.c.userid_folded, off.c.person_id, off.c.created_at).where(
                off.c.state.in_(("done", "partial", "failed")),
                sa.func.coalesce(off.c.finished_at, off.c.created_at) >= since,
            )
        ).all()
        for row in finished:
            if row.userid_folded in out:
                continue
            rehired = conn.execute(
                sa.select(outbox.c.id)
                .where(
                    outbox.c.person_id == row.person_id,
                    outbox.c.kind == "reactivated",
                    outbox.c.occurred_at > row.created_at,
                )
                .limit(1)
            ).first()
            if rehired is None:
                out.add(row.userid_folded)
    return out


def not_created_by_app(session: Session, group: Any, *, source: str, check_id: int | None = None) -> int:
    """Open (once) the manual action for a chat this app did not create (86008); returns its id."""
    existing = session.execute(
        sa.select(MANUAL.c.id).where(
            MANUAL.c.kind == "not_app_chat", MANUAL.c.group_id == group.id, MANUAL.c.state == "open"
        )
    ).scalar()
    if existing is not None:
        return existing
    assignee = (list(group.admins or ()) or [group.owner or None])[0]
    action_id = session.execute(
        sa.insert(MANUAL)
        .values(
            kind="not_app_chat", group_id=group.id, chat_ref=group.chatid, assignee=assignee, state="open",
            created_at=utcnow(),
            detail={
                "zh": f"群「{group.name}」不是本应用创建的群，无法通过接口调整成员，请人工处理",
                "en": f"Chat {group.name!r} was not created by this app (86008): members cannot be changed by API; "
                "a person must do it",
                "source": source, "check_id": check_id,
            },
        )
        .returning(MANUAL.c.id)
    ).scalar_one()  # fmt: skip
    audit.record(ACTOR, "groups.manual_action", target=f"group:{group.id}", reason="86008 not created by this app",
                 outcome="failure", detail={"manual_action_id": action_id}, session=session)  # fmt: skip
    from wecom_plugin.services.membership_notices import queue_manual_notice

    queue_manual_notice(session, action_id)
    return action_id


def chat_gone_alert(conn: Any, group: Any, errcode: int) -> None:
    raise_alert(
        f"groups.chat_gone:{group.id}",
        title_zh=f"受管群「{group.name}」在企业微信中已不存在（{codes.describe(errcode)}），已跳过",
        title_en=f"Governed chat {group.name!r} ({group.chatid}) no longer exists in WeCom ({errcode}); skipped",
        detail={"group_id": group.id, "chatid": group.chatid, "errcode": errcode},
        session=conn,
    )


# --- confirmation, preview, listing -------------------------------------------------------------
def confirm_check(session: Session, check_id: int, actor: str, reason: str | None = None) -> dict[str, Any]:
    """A person confirms a braked run: the next run may apply its plan. Audited; acks the alert.

    The caller commits, then runs (or enqueues) a check with ``confirmed_check=check_id``.
    """
    row = session.execute(sa.select(CHECK).where(CHECK.c.id == check_id)).first()
    if row is None:
        raise CheckError(f"没有检查 #{check_id} / no member check #{check_id}")
    if row.state != "braked":
        raise CheckError(
            f"检查 #{check_id} 的状态是 {row.state}，不需要确认 / check #{check_id} is {row.state}, not braked"
        )
    session.execute(
        sa.update(CHECK)
        .where(CHECK.c.id == check_id, CHECK.c.state == "braked")
        .values(state="confirmed", confirmed_by=actor[:128], confirmed_at=utcnow())
    )
    from wecom_plugin.models.ops import Alert
    from wecom_plugin.services.alerts import acknowledge

    for alert_id in session.execute(
        sa.select(Alert.id).where(Alert.key == BRAKE_ALERT, Alert.state == "open")
    ).scalars():
        acknowledge(session, alert_id, actor)
    brake = (row.report or {}).get("brake") or {}
    audit.record(actor, "groups.brake.confirm", target=f"membership_check:{check_id}", reason=reason,
                 detail={"removals": (row.stats or {}).get("removals"), "brake": brake}, session=session)  # fmt: skip
    return {"check_id": check_id, "state": "confirmed", "confirmed_by": actor, "stats": row.stats or {}, "brake": brake}


def preview(app: Any, group_id: int, *, read_chat: bool = True) -> dict[str, Any]:
    """Who the group's rule puts in the chat, and the difference from the chat as it is now.

    Read-only (no rows, no changes) and the same in every mode. Without a chat (not created yet) the
    difference is against an empty chat.
    """
    settings = app.extensions["wecom_settings"]
    engine = _engine(app)
    policy = policy_for(settings)
    with _read(engine) as conn:
        group = conn.execute(sa.select(GROUP).where(GROUP.c.id == group_id)).first()
        if group is None:
            raise CheckError(f"没有受管群 #{group_id} / no governed group #{group_id}")
        now = db_now(conn)
        exemptions = _exemptions(conn, [group.id], now).get(group.id, [])
        flagged = {f: r.created_at for f, r in _open_warns(conn, [group.id]).get(group.id, {}).items()}
    view = load_view(engine)
    try:
        facts = group_facts(group, exemptions, flagged)
    except RuleError as exc:
        raise CheckError(f"成员规则无效 / the membership rule is invalid: {exc}") from exc
    desired = desired_members(facts, view.directory, policy)
    current: list[str] = []
    chat_error = None
    chat_owner = ""
    if read_chat and group.chatid:
        from wecom_plugin.services.wecom import client_for
        from wecom_plugin.wecom.api import appchat

        client = client_for(app)
        try:
            client.spend(read_asks("appchat/get"))
            chat = appchat.get(client, group.chatid)
            current = [u for u in chat.get("userlist") or () if isinstance(u, str) and u]
            chat_owner = str(chat.get("owner") or "")
        except WeComError as exc:
            chat_error = codes.describe(exc.errcode)
        finally:
            client.close()
    evaluation = evaluate(facts, current, view.directory, policy, now)

    def person(folded: str) -> dict[str, Any]:
        p = view.person(folded)
        return {"userid": p.userid if p else folded, "name": p.name if p else ""}

    return {
        "group_id": group.id,
        "name": group.name,
        "chatid": group.chatid,
        "status": group.status,
        "chat_read": bool(read_chat and group.chatid and chat_error is None),
        "chat_error": chat_error,
        "chat_owner": chat_owner,
        "desired": {
            "required": sorted((person(f) for f in desired.required), key=lambda x: fold(x["userid"])),
            "permitted": sorted(
                (person(f) for f in desired.permitted - desired.required), key=lambda x: fold(x["userid"])
            ),
            "ineligible": sorted(
                (
                    {**person(f), "reason": r, "reason_zh": REASONS.get(r, (r, r))[0]}
                    for f, r in desired.ineligible.items()
                ),
                key=lambda x: fold(x["userid"]),
            ),
        },
        "current": len({fold(u) for u in current}),
        "removals": [finding_view(f, view) for f in evaluation.removals],
        "additions": [finding_view(f, view) for f in evaluation.additions],
        "warnings": [finding_view(f, view) for f in evaluation.warnings],
        "exempted": [finding_view(f, view) for f in evaluation.exempted],
        "owner_gone": evaluation.owner_gone,
        "brake_limit": brake_limit(evaluation.chat_size),
        "counts": evaluation.counts(),
    }


def last_check(session: Session | sa.Connection, check_id: int | None = None) -> Any:
    query = sa.select(CHECK)
    if check_id is not None:
        query = query.where(CHECK.c.id == check_id)
    return session.execute(query.order_by(CHECK.c.id.desc()).limit(1)).first()
