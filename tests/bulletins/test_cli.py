"""``wecom-plugin bulletins ...``: create, apply (all or nothing), show, list, update (compare-and-set),
pause/resume, delete, history, preview, resend, variables. Chinese first; a refusal prints every problem,
changes nothing and exits 1, never a traceback; robot keys never appear."""

from __future__ import annotations

import getpass
import json
from datetime import timedelta

import pytest
import sqlalchemy as sa

from tests.groups import check_support
from tests.groups.check_support import governed_chat, people
from wecom_plugin.cli import cli
from wecom_plugin.extensions import db
from wecom_plugin.models.bulletins import Bulletin, BulletinDelivery, BulletinRun
from wecom_plugin.models.dbtime import db_now
from wecom_plugin.models.groups import GovernedGroup
from wecom_plugin.models.jobs import Job, Schedule
from wecom_plugin.models.ops import AuditEvent

tenant_app = check_support.tenant_app  # the fixture

ROBOT_KEY = "7f3c2a91-55de-4b0e-9d1a-SeCrEtKeY0042"
ROBOT_URL = f"https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key={ROBOT_KEY}"


@pytest.fixture
def setup(tenant_app, emulator):
    """The app with an active governed group 研发部工作群 and three active members."""
    members = people(emulator, 3)
    group_id, _chatid = governed_chat(tenant_app, members, name="研发部工作群")
    return tenant_app, group_id, members


def run(app, *args):
    result = app.test_cli_runner().invoke(cli, ["bulletins", *args])
    assert "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert ROBOT_KEY not in result.output and ROBOT_KEY.lower() not in result.output.lower()
    return result


def document(user: str, *, name: str = "每日安全生产通报", extra: str = "", content: str | None = None) -> str:
    content = content or "各位同事：请于今日 17:00 前提交{{ this_week.label }}安全检查表。"
    return f"""\
name: {name}
message:
  msgtype: text
  title: "{{{{ date_zh }}}}（{{{{ weekday }}}}）安全生产通报"
  content: "{content}"
targets:
  chats: ["研发部工作群"]
  robots: [{{name: 值班机器人, key: "{ROBOT_URL}"}}]
  users: [{user}]
schedule:
  times: ["09:00"]
  days: {{rule: workdays}}
  skip: [2026-12-24]
timezone: Asia/Shanghai
confidential: false
quiet_policy: defer
misfire_grace_minutes: 10
{extra}"""


def write(tmp_path, text: str, name: str = "bulletin.yaml"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def count(app, model) -> int:
    with app.app_context():
        n = db.session.scalar(sa.select(sa.func.count()).select_from(model))
        db.session.rollback()
        return n


def audit_actions(app) -> list[tuple[str, str]]:
    with app.app_context():
        rows = db.session.execute(
            sa.select(AuditEvent.action, AuditEvent.actor)
            .where(AuditEvent.action.like("bulletins.%"))
            .order_by(AuditEvent.id)
        ).all()
        db.session.rollback()
        return [tuple(r) for r in rows]


def test_create_show_list_update_pause_resume_and_delete(setup, tmp_path):
    app, group_id, members = setup
    made = run(app, "create", write(tmp_path, document(members[0])), "--by", "wangxin", "--json")
    assert made.exit_code == 0, made.output
    view = json.loads(made.output)
    assert view["targets"]["chats"] == [group_id] and view["version"] == 1
    assert view["targets"]["robots"] == [{"name": "值班机器人", "chat": "", "key_hint": "…0042"}]
    assert view["owner"] == "user:wangxin" and view["next_run_at"]

    shown = run(app, "show", "每日安全生产通报")
    assert shown.exit_code == 0, shown.output
    assert shown.output.startswith(f"#{view['id']} 每日安全生产通报 — 启用 / active (v1)")
    assert "研发部工作群" in shown.output and "…0042" in shown.output
    assert "法定工作日" in shown.output and "09:00" in shown.output and "2026-12-24" in shown.output
    assert json.loads(run(app, "show", str(view["id"]), "--json").output)["name"] == "每日安全生产通报"

    listed = run(app, "list")
    assert "每日安全生产通报" in listed.output and "启用 active" in listed.output
    assert run(app, "list", "--state", "paused").output.startswith("没有通报")

    # update: the file's fields replace the stored ones, the others (robots and their keys) are kept
    change = tmp_path / "change.yaml"
    change.write_text("quiet_policy: skip\nschedule: {times: ['08:30'], days: {rule: weekdays}}\n", encoding="utf-8")
    updated = run(app, "update", "每日安全生产通报", str(change), "--by", "wangxin")
    assert updated.exit_code == 0, updated.output
    assert "第 1 版 → 第 2 版" in updated.output and "version 1 → 2" in updated.output
    after = json.loads(run(app, "show", str(view["id"]), "--json").output)
    assert after["quiet_policy"] == "skip" and after["schedule"]["times"] == ["08:30"]
    assert after["targets"]["robots"] == view["targets"]["robots"] and after["message"] == view["message"]

    # show --json, edited, goes back in with its version; a stale version is refused (nothing changes)
    edited = dict(after, misfire_grace_minutes=30)
    ok = run(app, "update", str(view["id"]), write(tmp_path, json.dumps(edited, ensure_ascii=False), "e.json"))
    assert ok.exit_code == 0, ok.output
    stale = run(
        app, "update", str(view["id"]), write(tmp_path, json.dumps(dict(after, quiet_policy="urgent")), "s.json")
    )
    assert stale.exit_code == 1
    assert "已被他人修改" in stale.output and "changed meanwhile" in stale.output
    current = json.loads(run(app, "show", str(view["id"]), "--json").output)
    assert current["quiet_policy"] == "skip" and current["misfire_grace_minutes"] == 30 and current["version"] == 3

    paused = run(app, "pause", "每日安全生产通报", "--reason", "国庆调整", "--by", "wangxin")
    assert paused.exit_code == 0 and paused.output.startswith("已暂停通报")
    assert json.loads(run(app, "show", str(view["id"]), "--json").output)["next_run_at"] is None
    assert "已是已暂停状态" in run(app, "pause", str(view["id"]), "--by", "wangxin").output
    assert "每日安全生产通报" in run(app, "list", "--state", "paused").output
    resumed = run(app, "resume", str(view["id"]), "--by", "wangxin")
    assert resumed.exit_code == 0 and resumed.output.startswith("已恢复通报")
    assert json.loads(run(app, "show", str(view["id"]), "--json").output)["next_run_at"]

    refused = run(app, "delete", str(view["id"]), "--by", "wangxin")
    assert refused.exit_code == 1 and "--yes" in refused.output
    assert count(app, Bulletin) == 1
    deleted = run(app, "delete", str(view["id"]), "--yes", "--by", "wangxin")
    assert deleted.exit_code == 0 and deleted.output.startswith("已删除通报")
    assert count(app, Bulletin) == 0
    with app.app_context():
        assert (
            db.session.scalar(sa.select(sa.func.count()).select_from(Schedule).where(Schedule.key.like("bulletin:%")))
            == 0
        )
        db.session.rollback()
    assert [a for a, _ in audit_actions(app)] == [
        "bulletins.create", "bulletins.update", "bulletins.update", "bulletins.pause", "bulletins.resume",
        "bulletins.delete",
    ]  # fmt: skip
    actors = [actor for _, actor in audit_actions(app)]
    assert actors[2] == f"user:{getpass.getuser()}"  # no --by: the operating-system user
    assert set(actors[:2] + actors[3:]) == {"user:wangxin"}
    missing = run(app, "show", str(view["id"]))
    assert missing.exit_code == 1 and "不存在" in missing.output and "does not exist" in missing.output


def test_apply_is_all_or_nothing_and_matches_by_name(setup, tmp_path):
    app, _group_id, members = setup
    good = document(members[0], name="早班通报")
    bad = document("nobody_here", name="晚班通报", content="今天是{{ dat }}")
    both = "bulletins:\n" + "\n".join(
        "  - " + text.replace("\n", "\n    ").rstrip() for text in (good, bad)
    )  # two entries; the second names an unknown member and an unknown variable
    refused = run(app, "apply", write(tmp_path, both), "--by", "wangxin")
    assert refused.exit_code == 1
    assert "bulletins[1].targets.users" in refused.output and "nobody_here" in refused.output
    assert "dat" in refused.output and "bulletins[0]" not in refused.output
    assert "未做任何更改" in refused.output and "nothing was changed" in refused.output
    assert count(app, Bulletin) == 0 and audit_actions(app) == []

    fixed = both.replace("nobody_here", members[1]).replace("{{ dat }}", "{{ date }}")
    path = write(tmp_path, fixed)
    dry = run(app, "apply", path, "--dry-run", "--by", "wangxin")
    assert dry.exit_code == 0, dry.output
    assert dry.output.count("将新建 / would create") == 2 and "dry run" in dry.output
    assert count(app, Bulletin) == 0

    applied = run(app, "apply", path, "--by", "wangxin")
    assert applied.exit_code == 0, applied.output
    lines = applied.output.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("已新建 / created #") for line in lines)
    assert "早班通报" in lines[0] and "晚班通报" in lines[1]
    assert count(app, Bulletin) == 2

    again = run(app, "apply", write(tmp_path, fixed.replace("misfire_grace_minutes: 10", "misfire_grace_minutes: 20")),
                "--json")  # fmt: skip
    assert again.exit_code == 0, again.output
    assert [b["action"] for b in json.loads(again.output)["bulletins"]] == ["update", "update"]
    listed = json.loads(run(app, "list", "--json").output)
    assert [b["misfire_grace_minutes"] for b in listed] == [20, 20] and [b["version"] for b in listed] == [2, 2]
    # the robots kept their keys: a re-apply with the key again stores it again, never prints it
    assert all(b["targets"]["robots"][0]["key_hint"] == "…0042" for b in listed)

    broken = run(app, "apply", write(tmp_path, "name: [unclosed\n"))
    assert broken.exit_code == 1 and "YAML" in broken.output and len(broken.output.strip().splitlines()) == 1


def test_save_time_refusals_name_the_problem(setup, tmp_path):
    app, _group_id, members = setup
    unknown = run(app, "create", write(tmp_path, document(members[0], content="截至{{ yesterdy }}的情况")))
    assert unknown.exit_code == 1 and "yesterdy" in unknown.output
    assert "message.content" in unknown.output

    confidential = run(app, "create", write(tmp_path, document(members[0]).replace("confidential: false",
                                                                                  "confidential: true")))  # fmt: skip
    assert confidential.exit_code == 1
    assert "机器人" in confidential.output and "safe" in confidential.output
    assert "message.confidential" in confidential.output and "robot webhook has no `safe` field" in confidential.output

    several = run(app, "create", write(tmp_path, "name: x\nmessage: {msgtype: fax}\ntargets: {}\nschedule: {}\n"))
    # Every problem at once: the schedule, the targets and the message's own msgtype.
    assert several.exit_code == 1 and several.output.count("\n  - ") == 3
    assert "fax" in several.output
    assert several.output.startswith("Error: 共 ")
    assert count(app, Bulletin) == 0

    not_yaml = run(app, "create", write(tmp_path, "message: [\n"))
    assert not_yaml.exit_code == 1 and "YAML" in not_yaml.output
    no_file = run(app, "create", str(tmp_path / "missing.yaml"))
    assert no_file.exit_code == 1 and "无法读取" in no_file.output


def test_history_preview_resend_and_variables(setup, tmp_path):
    app, group_id, members = setup
    made = run(app, "create", write(tmp_path, document(members[0])), "--by", "wangxin", "--json")
    bulletin_id = json.loads(made.output)["id"]

    empty = run(app, "history", str(bulletin_id))
    assert empty.exit_code == 0 and "还没有发送记录" in empty.output
    assert json.loads(run(app, "history", str(bulletin_id), "--json").output)["runs"] == []

    # around National Day 2026: 10-01 to 10-07 are holidays, 10-10 (a Saturday) is a make-up workday
    preview = run(app, "preview", str(bulletin_id), "--from", "2026-09-29", "--next", "5")
    assert preview.exit_code == 0, preview.output
    out = preview.output
    assert "2026-09-29 星期二  发送 send — 工作日 / workday" in out
    assert "2026-10-01 星期四  跳过 skip — 国庆节放假 / National Day holiday" in out
    assert "2026-10-10 星期六  发送 send — 调休上班" in out
    assert "群「研发部工作群」" in out and "机器人「值班机器人」" in out and "应用消息" in out
    assert "2026年9月29日（星期二）安全生产通报" in out and "9月28日—10月4日安全检查表" in out
    assert "[群聊 / group chat]" in out and "[群机器人 / robot]" in out and "[应用消息 / app message]" in out
    data = json.loads(run(app, "preview", str(bulletin_id), "--from", "2026-09-29", "--next", "5", "--json").output)
    days = {d["date"]: d for d in data["days"]}
    assert days["2026-10-01"]["state"] == "skip" and days["2026-10-01"]["reason_zh"] == "国庆节放假"
    assert sum(len(d["occurrences"]) for d in data["days"]) == 5
    # a quiet window of the group holding 09:00: the chat is deferred to its end, the others are not
    with app.app_context():
        db.session.get(GovernedGroup, group_id).quiet_windows = ["08:00-09:30"]
        db.session.commit()
    quiet = run(app, "preview", str(bulletin_id), "--from", "2026-09-29", "--next", "1").output
    assert "群「研发部工作群」#1 / group chat #1: 顺延至 09:30 / defer to 09:30（免打扰时段 08:00-09:30" in quiet
    assert "机器人「值班机器人」 / robot '值班机器人': 发送 send" in quiet
    bad_from = run(app, "preview", str(bulletin_id), "--from", "next tuesday")
    assert bad_from.exit_code == 1 and "from" in bad_from.output and "ISO 8601" in bad_from.output

    delivery = _failed_delivery(app, bulletin_id, f"chat:{group_id}")
    history = run(app, "history", "每日安全生产通报")
    assert "已发送" not in history.output and "失败 / failed" in history.output
    assert f"发送记录 delivery #{delivery}" in history.output and "errcode 86003" in history.output
    assert "计划 scheduled 2026-11-20 09:00" in history.output and "群「研发部工作群」" in history.output

    no_reason = run(app, "resend", str(delivery))
    assert no_reason.exit_code == 2 and "--reason" in no_reason.output
    resent = run(app, "resend", str(delivery), "--reason", "群已恢复，补发", "--by", "wangxin")
    assert resent.exit_code == 0, resent.output
    assert resent.output.startswith(f"已安排重发发送记录 #{delivery}")
    assert count(app, BulletinDelivery) == 2
    with app.app_context():
        jobs = db.session.scalars(sa.select(Job).where(Job.name == "bulletins.fire")).all()
        assert [j.payload.get("resend_of") for j in jobs] == [delivery]
        db.session.rollback()
    twice = run(app, "resend", str(delivery), "--reason", "again")
    assert twice.exit_code == 1 and "already resent" in twice.output
    assert run(app, "resend", "424242", "--reason", "x").exit_code == 1
    assert ("bulletins.resend", "user:wangxin") in audit_actions(app)

    variables = run(app, "variables")
    assert variables.exit_code == 0
    assert "{{ date_zh }}" in variables.output and "2026年11月26日" in variables.output
    assert "{{ 本周 }}" in variables.output
    assert json.loads(run(app, "variables", "--json").output)["weekday"]["en"].startswith("the weekday")


def _failed_delivery(app, bulletin_id: int, target: str) -> int:
    """A run of 2026-11-20 09:00 (Shanghai) whose delivery to ``target`` failed; returns the delivery's id."""
    from datetime import UTC, datetime

    scheduled = datetime(2026, 11, 20, 1, 0, tzinfo=UTC)
    with app.app_context():
        now = db_now(db.session)
        run_row = BulletinRun(bulletin_id=bulletin_id, scheduled_at=scheduled, state="partial", reason="",
                              version=1, created_at=now, finished_at=now)  # fmt: skip
        db.session.add(run_row)
        db.session.flush()
        delivery = BulletinDelivery(
            delivery_id="ab" * 16, run_id=run_row.id, bulletin_id=bulletin_id, target=target, attempt=1,
            state="failed", scheduled_at=scheduled, due_at=scheduled, deadline_at=scheduled + timedelta(minutes=10),
            errcode=86003, reason="errcode 86003: chat not found", updated_at=now,
        )  # fmt: skip
        db.session.add(delivery)
        db.session.commit()
        return delivery.id


def test_the_example_policy_file_applies_to_a_tenant_with_its_groups(tenant_app, emulator):
    """config/bulletins.example.yaml is what operators copy: it must stay valid (dry run, then for real)."""
    from pathlib import Path

    members = people(emulator, 3)
    governed_chat(tenant_app, members, name="信息技术部值班群")
    group_id, _ = governed_chat(tenant_app, members, name="财务部工作群")
    with tenant_app.app_context():
        db.session.get(GovernedGroup, group_id).confidentiality = "confidential"
        db.session.commit()
    example = str(Path(__file__).resolve().parents[2] / "config" / "bulletins.example.yaml")
    dry = run(tenant_app, "apply", example, "--dry-run", "--by", "张三")
    assert dry.exit_code == 0, dry.output
    assert count(tenant_app, Bulletin) == 0
    applied = run(tenant_app, "apply", example, "--by", "张三")
    assert applied.exit_code == 0, applied.output
    assert count(tenant_app, Bulletin) == 3
