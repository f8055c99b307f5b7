"""The sandbox tenant's read-only HTML page, ``/_emulator/ui``: watch the plugin work.

Server-rendered, no JavaScript, labels Chinese first then English. Every value that comes from the
tenant (names, chat names, message text, URLs, error messages) is HTML-escaped: names are user data.

Pages:

* ``/_emulator/ui``: the org (department tree with members, status and leaders), app chats (owner,
  creator, members, latest messages per member, dropped ones marked 被丢弃 / dropped), customer
  groups, members' inboxes, callbacks (receivers and deliveries with their attempts) and the
  request-log tail. ``?refresh=N`` reloads every N seconds.
* ``/_emulator/ui/chats/<chatid>``: one chat and everything sent to it, per member.
* ``/_emulator/ui/users/<userid>``: one member and everything they were sent, as they would see it.
"""

from __future__ import annotations

import json
from datetime import datetime
from html import escape
from typing import Any
from urllib.parse import quote

from werkzeug.wrappers import Request, Response

from .clock import SHANGHAI
from .state import CorpData, Message, Tenant, User

STATUS = {1: ("已激活", "active"), 2: ("已禁用", "disabled"), 4: ("未激活", "unactivated"), 5: ("已离职", "left")}
DROP_REASONS = {
    "disabled": "成员已禁用 member disabled",
    "left": "成员已离职 member left",
    "departed": "成员已删除 member deleted",
    "duplicate": "重复消息 duplicate (enable_duplicate_check)",
    "member_per_minute": "超过每人每分钟上限 over the per-member minute limit",
    "member_per_day": "超过每人每天上限 over the per-member daily limit",
    "member_per_hour": "超过每人每小时上限 over the per-member hourly limit",
    "corp_per_minute": "超过企业每分钟上限 over the corp minute limit",
    "corp_per_hour": "超过企业每小时上限 over the corp hourly limit",
    "app_per_day": "超过应用每天上限 over the app daily budget",
}
DELIVERY_STATUS = {
    "queued": "排队 queued",
    "delayed": "延迟 delayed",
    "held": "暂扣 held",
    "sending": "发送中 sending",
    "retrying": "重试 retrying",
    "delivered": "已送达 delivered",
    "failed": "失败 failed",
    "dropped": "已丢弃 dropped",
}
MEMBERS_PER_DEPARTMENT = 200
MESSAGES_PER_CHAT = 10
INBOX_ROWS = 500
TAIL = 50

CSS = """
body{font-family:"PingFang SC","Microsoft YaHei","Noto Sans CJK SC",sans-serif;margin:1.5em;color:#222;line-height:1.4}
h1{font-size:1.4em}h2{font-size:1.15em;border-bottom:1px solid #ccc;margin-top:1.6em}
h3{font-size:1em;margin:.8em 0 .3em}table{border-collapse:collapse;margin:.4em 0}
td,th{border:1px solid #ddd;padding:.2em .5em;vertical-align:top;font-size:.9em}
th{background:#f4f4f4;text-align:left}ul{margin:.2em 0 .2em 1.2em;padding:0}li{margin:.1em 0}
.tag{display:inline-block;border-radius:3px;padding:0 .35em;font-size:.8em;margin-left:.3em;border:1px solid #aaa}
.s1{border-color:#3a3;color:#282}.s2{border-color:#c60;color:#a50}.s4{border-color:#888;color:#666}.s5{border-color:#c00;color:#a00}
.leader{border-color:#06c;color:#05a}.dropped{color:#a00}.dropped .body{text-decoration:line-through;color:#a66}
.ok{color:#282}.bad{color:#a00}.muted{color:#777}pre{white-space:pre-wrap;margin:.2em 0;font-size:.85em;max-width:60em}
nav a{margin-right:1em}.card{border:1px solid #ccd;border-radius:4px;padding:.3em .6em;display:inline-block}
.btn{display:inline-block;border:1px solid #58c;border-radius:3px;padding:0 .5em;margin:.2em .2em 0 0}
.grey{border-color:#bbb;color:#999}
"""


def e(value: Any) -> str:
    return escape("" if value is None else str(value), quote=True)


def _ts(ts: float | None) -> str:
    if ts is None:
        return ""
    return datetime.fromtimestamp(ts, SHANGHAI).strftime("%Y-%m-%d %H:%M:%S")


def _status(user: User) -> str:
    zh, en = STATUS.get(user.status, (str(user.status), str(user.status)))
    return f'<span class="tag s{user.status}">{e(zh)} {e(en)}</span>'


def _user_link(data: CorpData, key_or_id: str | None) -> str:
    if not key_or_id:
        return '<span class="muted">—</span>'
    user = data.users.get(key_or_id.lower())
    if user is not None:
        return f'<a href="/_emulator/ui/users/{quote(user.userid, safe="")}">{e(user.name)}</a> ({e(user.userid)})'
    departed = data.departed.get(key_or_id.lower())
    if departed is not None:
        return f'{e(departed.name)} ({e(departed.userid)}) <span class="tag s5">已删除 deleted</span>'
    return e(key_or_id)


def _chat_link(chatid: str, name: str | None = None) -> str:
    return f'<a href="/_emulator/ui/chats/{quote(chatid, safe="")}">{e(name or chatid)}</a>'


def _app_name(data: CorpData, agentid: int | None) -> str:
    if agentid is None:
        return '<span class="muted">—</span>'
    app = data.apps.get(agentid)
    return f"{e(app.name)} ({agentid})" if app else e(agentid)


def render_content(msg: Message, greyed_for: str | None = None) -> str:
    """A message as a member would see it in the client (text, cards, articles, files…)."""
    c = msg.content if isinstance(msg.content, dict) else {}
    t = msg.msgtype
    if t == "text":
        return f'<pre class="body">{e(c.get("content"))}</pre>'
    if t in ("markdown", "markdown_v2"):
        return f'<pre class="body">{e(c.get("content"))}</pre><span class="muted">markdown</span>'
    if t in ("image", "voice", "video", "file"):
        label = {"image": "图片 image", "voice": "语音 voice", "video": "视频 video", "file": "文件 file"}[t]
        extra = f" {e(c.get('title'))}" if c.get("title") else ""
        ident = c.get("media_id") or c.get("md5") or ""
        return f'<span class="body">[{label}]{extra} <span class="muted">{e(ident)}</span></span>'
    if t == "textcard":
        return (
            f'<div class="card body"><b>{e(c.get("title"))}</b><br>{e(c.get("description"))}<br>'
            f'<span class="btn">{e(c.get("btntxt") or "详情")}</span> '
            f'<span class="muted">{e(c.get("url"))}</span></div>'
        )
    if t in ("news", "mpnews"):
        items = "".join(f"<li>{e(a.get('title'))}</li>" for a in c.get("articles", []) if isinstance(a, dict))
        return f'<div class="card body">图文 articles<ul>{items}</ul></div>'
    if t == "template_card":
        return _card(msg, c, greyed_for)
    return f'<pre class="body">{e(json.dumps(c, ensure_ascii=False)[:500])}</pre>'


def _card(msg: Message, card: dict[str, Any], userid: str | None) -> str:
    replaced_name = None
    for update in msg.updates:
        if userid is None or userid in update.get("targets", ()):
            if update.get("template_card"):
                card = update["template_card"]
            if update.get("button"):
                replaced_name = update["button"].get("replace_name")
    main = card.get("main_title") or {}
    parts = [f"<b>{e(main.get('title'))}</b>"]
    if main.get("desc"):
        parts.append(f"<br>{e(main.get('desc'))}")
    if card.get("sub_title_text"):
        parts.append(f"<br>{e(card.get('sub_title_text'))}")
    for item in card.get("horizontal_content_list", []) or []:
        if isinstance(item, dict):
            parts.append(f"<br>{e(item.get('keyname'))}: {e(item.get('value'))}")
    if replaced_name is not None:
        parts.append(f'<br><span class="btn grey">{e(replaced_name)}</span>')
    else:
        for b in card.get("button_list", []) or []:
            if isinstance(b, dict):
                parts.append(f'<span class="btn">{e(b.get("text"))}</span>')
        if card.get("submit_button"):
            parts.append(f'<br><span class="btn">{e(card["submit_button"].get("text"))}</span>')
    task = f' <span class="muted">task_id {e(msg.task_id)}</span>' if msg.task_id else ""
    return f'<div class="card body">[{e(card.get("card_type"))}]{task}<br>{"".join(parts)}</div>'


def _drop(reason: str | None) -> str:
    if reason is None:
        return '<span class="ok">已送达 delivered</span>'
    return f'<span class="bad">被丢弃 dropped: {e(DROP_REASONS.get(reason, reason))}</span>'


def _sender(data: CorpData, msg: Message) -> str:
    if msg.path == "robot":
        robot = data.robots.get(msg.robot_key or "")
        return f"机器人 robot {e(robot.name if robot else msg.robot_key)}"
    return f"应用 app {_app_name(data, msg.agentid)}"


def _page(title: str, body: str, refresh: int | None = None) -> Response:
    meta = f'<meta http-equiv="refresh" content="{int(refresh)}">' if refresh else ""
    html = (
        f'<!doctype html><html lang="zh-CN"><head><meta charset="utf-8">{meta}<title>{e(title)}</title>'
        f"<style>{CSS}</style></head><body>"
        '<nav><a href="/_emulator/ui">总览 Overview</a><a href="/_emulator/ui#org">组织架构 Organisation</a>'
        '<a href="/_emulator/ui#chats">群聊 Chats</a><a href="/_emulator/ui#inboxes">收件箱 Inboxes</a>'
        '<a href="/_emulator/ui#callbacks">回调 Callbacks</a><a href="/_emulator/ui#requests">请求日志 Requests</a>'
        f"</nav>{body}</body></html>"
    )
    return Response(html, content_type="text/html; charset=utf-8", headers={"Cache-Control": "no-store"})


def _refresh(request: Request) -> int | None:
    raw = request.args.get("refresh", "")
    return max(1, min(3600, int(raw))) if raw.isdigit() else None


# --------------------------------------------------------------------------------------------------
# sections
# --------------------------------------------------------------------------------------------------
def _org(t: Tenant) -> str:
    d = t.data
    out = ['<h2 id="org">组织架构 Organisation</h2>']

    def department(dep_id: int) -> str:
        dep = d.departments[dep_id]
        leaders = d.department_leaders(dep_id)
        members = list(d.dept_members.get(dep_id, ()))
        lead = f' <span class="muted">负责人 leaders: {e(", ".join(leaders))}</span>' if leaders else ""
        html = [f'<li><b>{e(dep.name)}</b> <span class="muted">#{dep.id} · {len(members)} 人 members</span>{lead}']
        items = []
        for key in members[:MEMBERS_PER_DEPARTMENT]:
            u = d.users[key]
            is_leader = any(dd == dep_id and flag for dd, flag in zip(u.departments, u.is_leader_in_dept, strict=False))
            badge = ' <span class="tag leader">负责人 leader</span>' if is_leader else ""
            pos = f" · {e(u.position)}" if u.position else ""
            items.append(f"<li>{_user_link(d, u.userid)}{pos} {_status(u)}{badge}</li>")
        if len(members) > MEMBERS_PER_DEPARTMENT:
            items.append(f'<li class="muted">… 另有 {len(members) - MEMBERS_PER_DEPARTMENT} 人 more</li>')
        children = "".join(department(c) for c in d.children.get(dep_id, ()))
        if items or children:
            html.append(f"<ul>{''.join(items)}{children}</ul>")
        html.append("</li>")
        return "".join(html)

    if 1 in d.departments:
        out.append(f"<ul>{department(1)}</ul>")
    if d.departed:
        rows = "".join(
            f"<tr><td>{e(x.name)}</td><td>{e(x.userid)}</td><td>{_ts(x.departed_at)}</td></tr>"
            for x in d.departed.values()
        )
        out.append(f"<h3>已删除成员 Deleted members</h3><table><tr><th>姓名 Name</th><th>账号 UserID</th>"
                   f"<th>删除时间 Deleted at</th></tr>{rows}</table>")  # fmt: skip
    return "".join(out)


def _chat_messages(d: CorpData, chatid: str, limit: int | None) -> str:
    ids = d.chat_messages.get(chatid, [])
    shown = ids[-limit:] if limit else ids
    if not shown:
        return '<p class="muted">还没有消息 no messages yet</p>'
    rows = []
    for mid in shown:
        m = d.messages[mid]
        delivered = [m.spelling.get(k, k) for k, r in m.recipients.items() if r is None]
        dropped = [(m.spelling.get(k, k), r) for k, r in m.recipients.items() if r is not None]
        who = f"已送达 delivered {len(delivered)}: " + e(", ".join(delivered)) if delivered else ""
        lost = "".join(f'<div class="dropped">被丢弃 dropped → {e(u)}: {e(DROP_REASONS.get(r, r))}</div>'
                       for u, r in dropped)  # fmt: skip
        cls = ' class="dropped"' if dropped and not delivered else ""
        rows.append(
            f'<tr{cls}><td>{_ts(m.ts)}</td><td>{_sender(d, m)}<br><span class="muted">{e(m.msgtype)} · {e(m.msgid)}'
            f"</span></td><td>{render_content(m)}</td><td>{who}{lost}</td></tr>"
        )
    more = f'<p class="muted">最近 {len(shown)} / {len(ids)} 条 latest of all</p>' if len(shown) < len(ids) else ""
    return (f"{more}<table><tr><th>时间 Time</th><th>发送者 Sender</th><th>内容 Content</th>"
            f"<th>接收情况 Recipients</th></tr>{''.join(rows)}</table>")  # fmt: skip


def _chat_block(d: CorpData, chatid: str, limit: int | None) -> str:
    chat = d.chats[chatid]
    members = ", ".join(_user_link(d, k) for k in chat.members) or '<span class="muted">—</span>'
    return (
        f"<h3>{_chat_link(chat.chatid, chat.name or '(未命名 unnamed)')} "
        f'<span class="muted">{e(chat.chatid)}</span></h3>'
        f"<table><tr><th>群主 Owner</th><td>{_user_link(d, chat.owner)}</td></tr>"
        f"<tr><th>创建者 Created by</th><td>应用 app {_app_name(d, chat.creator)} · {_ts(chat.created_at)}</td></tr>"
        f"<tr><th>成员 Members ({len(chat.members)})</th><td>{members}</td></tr></table>"
        f"{_chat_messages(d, chatid, limit)}"
    )


def _chats(t: Tenant) -> str:
    d = t.data
    out = [f'<h2 id="chats">群聊 App chats ({len(d.chats)})</h2>']
    for chatid in d.chats:
        out.append(_chat_block(d, chatid, MESSAGES_PER_CHAT))
    if not d.chats:
        out.append('<p class="muted">没有群聊 no chats</p>')
    if d.customer_groups:
        now, delay = t.now(), t.flags.groupchat_transfer_delay
        rows = "".join(
            f"<tr><td>{e(g.name)}</td><td>{e(g.chat_id)}</td><td>{_user_link(d, g.owner)}</td>"
            f"<td>{g.status(d, now, delay)}</td><td>{len(g.members)}</td></tr>"
            for g in d.customer_groups.values()
        )
        out.append(
            f'<h3 id="customer-groups">客户群 Customer groups ({len(d.customer_groups)})</h3><table><tr>'
            "<th>群名 Name</th><th>chat_id</th><th>群主 Owner</th><th>状态 Status</th><th>人数 Members</th></tr>"
            f"{rows}</table>"
        )
    other = [m for m in d.messages.values() if m.chatid is None]
    if other:
        rows = []
        for m in other[-TAIL:]:
            delivered = sum(1 for r in m.recipients.values() if r is None)
            dropped = len(m.recipients) - delivered
            drop = f' · <span class="bad">被丢弃 dropped {dropped}</span>' if dropped else ""
            rows.append(f"<tr><td>{_ts(m.ts)}</td><td>{_sender(d, m)}</td><td>{render_content(m)}</td>"
                        f"<td>已送达 delivered {delivered}{drop}</td></tr>")  # fmt: skip
        out.append(
            f"<h3>应用消息 App messages (message/send, 最近 latest {len(rows)})</h3><table><tr><th>时间 Time</th>"
            f"<th>发送者 Sender</th><th>内容 Content</th><th>接收情况 Recipients</th></tr>{''.join(rows)}</table>"
        )
    return "".join(out)


def _inboxes(t: Tenant) -> str:
    d = t.data
    rows = []
    for n, (key, mids) in enumerate(d.inbox.items()):
        if n == INBOX_ROWS:
            rows.append(f'<tr><td colspan="3" class="muted">… 另有 {len(d.inbox) - INBOX_ROWS} 人 more</td></tr>')
            break
        delivered = sum(1 for mid in mids if d.messages[mid].recipients.get(key) is None)
        dropped = len(mids) - delivered
        drop = f'<span class="bad">{dropped}</span>' if dropped else "0"
        rows.append(f"<tr><td>{_user_link(d, key)}</td><td>{delivered}</td><td>{drop}</td></tr>")
    if not rows:
        return (
            '<h2 id="inboxes">成员收件箱 Member inboxes</h2>'
            '<p class="muted">还没有人收到消息 nobody received anything</p>'
        )
    return (
        '<h2 id="inboxes">成员收件箱 Member inboxes</h2><table><tr><th>成员 Member</th><th>已送达 Delivered</th>'
        f"<th>被丢弃 Dropped</th></tr>{''.join(rows)}</table>"
    )


def _callbacks(t: Tenant) -> str:
    hub = t.callbacks
    out = ['<h2 id="callbacks">回调 Callbacks</h2>']
    if hub is None:
        return out[0] + '<p class="muted">未配置 not configured</p>'
    with hub.cond:
        receivers = [r.view() for r in hub.receivers.values()]
        items = list(hub.log.values())[-TAIL:]
        faults = [f.view() for f in hub.faults.values()]
    if receivers:
        rows = "".join(
            f"<tr><td>{e(r['id'])}</td><td>{e(r['url'])}</td><td>"
            + ('<span class="ok">通过 passed</span>' if r["verified"] else
               '<span class="muted">未验证 not verified</span>' if r["verified"] is None else
               f'<span class="bad">失败 failed: {e((r["verification"] or {}).get("error"))}</span>')
            + "</td></tr>"
            for r in receivers
        )  # fmt: skip
        out.append(f"<table><tr><th>接收方 Receiver</th><th>URL</th><th>URL 验证 Verification</th></tr>{rows}</table>")
    else:
        out.append('<p class="muted">没有接收服务器 no receiver configured</p>')
    if faults:
        out.append("<p>故障注入 Faults: " + e("; ".join(json.dumps(f, ensure_ascii=False) for f in faults)) + "</p>")
    rows = []
    for dlv in reversed(items):
        attempts = ", ".join(
            (str(a.status) if a.status is not None else e(a.error or "error")) + f" ({a.duration_ms:.0f} ms)"
            for a in dlv.attempts
        )
        cls = "ok" if dlv.status == "delivered" else "bad" if dlv.status in ("failed", "dropped") else "muted"
        copy = f" · 副本 copy of #{dlv.copy_of}" if dlv.copy_of else ""
        faults_txt = f'<br><span class="muted">{e(", ".join(dlv.faults))}</span>' if dlv.faults else ""
        plain = f"<details><summary>XML</summary><pre>{e(dlv.plaintext)}</pre></details>" if dlv.plaintext else ""
        rows.append(
            f"<tr><td>#{dlv.id}{copy}</td><td>{_ts(dlv.created_at)}</td><td>{e(dlv.receiver)}</td>"
            f"<td>{e(dlv.event)} {e(dlv.change_type or '')}<br>{e(dlv.summary)}{plain}</td>"
            f'<td class="{cls}">{e(DELIVERY_STATUS.get(dlv.status, dlv.status))}{faults_txt}</td>'
            f"<td>{e(attempts)}</td></tr>"
        )
    if rows:
        out.append(
            f"<h3>投递 Deliveries (最近 latest {len(rows)})</h3><table><tr><th>#</th><th>时间 Time</th>"
            "<th>接收方 Receiver</th><th>事件 Event</th><th>结果 Outcome</th><th>尝试 Attempts (HTTP)</th></tr>"
            f"{''.join(rows)}</table>"
        )
    else:
        out.append('<p class="muted">还没有回调 no callbacks yet</p>')
    return "".join(out)


def _requests(t: Tenant) -> str:
    entries = t.request_log.find(limit=TAIL)
    rows = "".join(
        f"<tr><td>{x['seq']}</td><td>{_ts(x['ts'])}</td><td>{e(x['method'])} {e(x['endpoint'])}</td>"
        f"<td>{e(x.get('principal'))}</td><td>{e(x.get('ip'))}</td>"
        f'<td class="{"bad" if x.get("errcode") else "ok"}">{e(x.get("errcode"))}</td>'
        f"<td>{e(str(x.get('errmsg', ''))[:120])}</td><td>{e(x.get('duration_ms'))}</td></tr>"
        for x in reversed(entries)
    )
    if not rows:
        return '<h2 id="requests">请求日志 Request log</h2><p class="muted">还没有请求 no requests yet</p>'
    return (
        f'<h2 id="requests">请求日志 Request log (最近 latest {len(entries)} / {t.request_log.last_seq})</h2>'
        "<table><tr><th>#</th><th>时间 Time</th><th>接口 Endpoint</th><th>调用方 Principal</th><th>IP</th>"
        f"<th>errcode</th><th>errmsg</th><th>ms</th></tr>{rows}</table>"
    )


# --------------------------------------------------------------------------------------------------
# pages
# --------------------------------------------------------------------------------------------------
def overview(t: Tenant, request: Request) -> Response:
    with t.lock:
        d = t.data
        head = (
            f'<h1>沙箱企业 Sandbox tenant: {e(d.corp_name)} <span class="muted">{e(d.corp_id)}</span></h1>'
            f"<p>时钟 Clock {_ts(t.now())} (Asia/Shanghai) · 成员 members {len(d.users)} · 部门 departments "
            f"{len(d.departments)} · 群聊 chats {len(d.chats)} · 消息 messages {len(d.messages)} · "
            f"应用 apps: {', '.join(_app_name(d, a) for a in d.apps)}</p>"
        )
        body = head + _org(t) + _chats(t) + _inboxes(t)
    body += _callbacks(t) + _requests(t)
    return _page(f"沙箱企业 {d.corp_name}", body, _refresh(request))


def chat_page(t: Tenant, request: Request, chatid: str) -> Response:
    with t.lock:
        d = t.data
        if chatid not in d.chats:
            resp = _page("没有这个群 no such chat", f"<h1>没有这个群 No chat {e(chatid)}</h1>")
            resp.status_code = 404
            return resp
        body = f"<h1>群聊 Chat {e(d.chats[chatid].name)}</h1>" + _chat_block(d, chatid, None)
    return _page(f"群聊 {d.chats[chatid].name}", body, _refresh(request))


def user_page(t: Tenant, request: Request, userid: str) -> Response:
    with t.lock:
        d = t.data
        user = d.users.get(userid.lower())
        if user is None:
            resp = _page("没有这个成员 no such member", f"<h1>没有这个成员 No member {e(userid)}</h1>")
            resp.status_code = 404
            return resp
        deps = ", ".join(e(d.departments[x].name) for x in user.departments if x in d.departments)
        chats = ", ".join(_chat_link(c, d.chats[c].name) for c in d.user_chats.get(user.key, ()) if c in d.chats)
        info = (
            f'<h1>{e(user.name)} <span class="muted">{e(user.userid)}</span> {_status(user)}</h1>'
            f"<table><tr><th>部门 Departments</th><td>{deps}</td></tr><tr><th>职务 Position</th><td>{e(user.position)}"
            f"</td></tr><tr><th>直属上级 Direct leaders</th><td>{e(', '.join(user.direct_leader))}</td></tr>"
            f"<tr><th>所在群聊 Chats</th><td>{chats or '—'}</td></tr></table>"
        )
        rows = []
        for mid in d.inbox.get(user.key, ()):
            m = d.messages[mid]
            reason = m.recipients.get(user.key)
            where = (
                _chat_link(m.chatid, d.chats[m.chatid].name if m.chatid in d.chats else m.chatid) if m.chatid else ""
            )
            cls = ' class="dropped"' if reason is not None else ""
            rows.append(f"<tr{cls}><td>{_ts(m.ts)}</td><td>{_sender(d, m)} {where}</td>"
                        f"<td>{render_content(m, user.userid)}</td><td>{_drop(reason)}</td></tr>")  # fmt: skip
        inbox = (
            "<h2>收到的消息 Messages received</h2><table><tr><th>时间 Time</th><th>来自 From</th><th>内容 Content</th>"
            f"<th>状态 Status</th></tr>{''.join(rows)}</table>"
            if rows
            else '<h2>收到的消息 Messages received</h2><p class="muted">还没有消息 no messages yet</p>'
        )
    return _page(f"成员 {user.name}", info + inbox, _refresh(request))


def dispatch(t: Tenant, request: Request) -> Response:
    path = request.path[len("/_emulator/ui") :].strip("/")
    if request.method not in ("GET", "HEAD"):
        return Response("GET only", status=405, content_type="text/plain; charset=utf-8")
    if not path:
        return overview(t, request)
    kind, _, rest = path.partition("/")
    if kind == "chats" and rest:
        return chat_page(t, request, rest)
    if kind == "users" and rest:
        return user_page(t, request, rest)
    resp = _page("没有这个页面 not found", "<h1>没有这个页面 Not found</h1>")
    resp.status_code = 404
    return resp
