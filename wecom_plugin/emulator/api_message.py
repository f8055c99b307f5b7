"""App messages: ``message/send`` (§4, §14.2) and ``message/update_template_card`` (§14.4).

Recipients outside the app's visibility (or unknown) are echoed lower-cased in ``invaliduser`` /
``invalidparty`` / ``invalidtag`` with errcode 0; only when every target is invalid does the call
fail (81013). Per app and member, more than 30 messages a minute or 1000 an hour are dropped
silently, as is anything past the app's daily budget (members × 200).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from .codes import ApiError
from .content import MESSAGE, check_safe, needs_response_code, validate
from .framework import APP, Ctx, endpoint
from .state import DAY, Message, ResponseCode, Tenant, User


def _split(value: str) -> list[str]:
    return [x.strip() for x in value.split("|") if x.strip()]


def _party_members(ctx: Ctx, dep_id: int, vis: frozenset[int]) -> list[str]:
    d = ctx.data
    out: list[str] = []
    for dep in d.subtree(dep_id):
        if dep in vis:
            out.extend(d.dept_members.get(dep, ()))
    return out


def resolve_targets(
    ctx: Ctx, touser: str, toparty: str, totag: str
) -> tuple[dict[str, User], list[str], list[str], list[str], bool]:
    """Recipients and the invalid parts; the last value says whether any target was valid."""
    t, d = ctx.tenant, ctx.data
    p = ctx.principal
    assert p is not None
    users_raw, parties_raw, tags_raw = _split(touser), _split(toparty), _split(totag)
    if len(users_raw) > 1000:
        raise ApiError(40032)
    if len(parties_raw) > 100:
        raise ApiError(82002)
    if len(tags_raw) > 100:
        raise ApiError(82003)
    recipients: dict[str, User] = {}
    bad_users: list[str] = []
    bad_parties: list[str] = []
    bad_tags: list[str] = []
    any_valid = False
    if users_raw == ["@all"]:
        for u in d.users.values():
            if t.user_visible(p, u):
                recipients[u.key] = u
        return recipients, bad_users, bad_parties, bad_tags, True
    for uid in users_raw:
        u = t.find_user(uid)
        if u is not None and t.user_visible(p, u):
            recipients.setdefault(u.key, u)
            any_valid = True
        else:
            bad_users.append(uid.lower())
    vis = t.visible_departments(p)
    for raw in parties_raw:
        try:
            dep_id = int(raw)
        except ValueError:
            dep_id = -1
        if dep_id not in d.departments or dep_id not in vis:
            bad_parties.append(raw)
            continue
        any_valid = True
        for key in _party_members(ctx, dep_id, vis):
            recipients.setdefault(key, d.users[key])
    for raw in tags_raw:
        try:
            tag = d.tags.get(int(raw))
        except ValueError:
            tag = None
        if tag is None:
            bad_tags.append(raw)
            continue
        any_valid = True
        for key in tag.users:
            u = d.users.get(key)
            if u is not None and t.user_visible(p, u):
                recipients.setdefault(key, u)
        for dep in tag.parties:
            for key in _party_members(ctx, dep, vis):
                recipients.setdefault(key, d.users[key])
    return recipients, bad_users, bad_parties, bad_tags, any_valid


def mint_response_code(tenant: Tenant, agentid: int, msgid: str) -> str:
    """A fresh single-use response_code for ``msgid`` (also for click events, in the callback task)."""
    code = tenant.next_id("rc", 48)
    tenant.data.response_codes[code] = ResponseCode(code, agentid, msgid, tenant.now())
    return code


@endpoint("message/send", "POST", principals=APP, basic_limit=False)
def message_send(ctx: Ctx) -> dict[str, Any]:
    t, d, f = ctx.tenant, ctx.data, ctx.flags
    agentid = ctx.get("agentid", int)
    if agentid is None:
        raise ApiError(41011)
    if agentid != ctx.app.agentid:
        raise ApiError(40056)
    touser = ctx.get("touser", str, "")
    toparty = ctx.get("toparty", str, "")
    totag = ctx.get("totag", str, "")
    msgtype = ctx.get("msgtype", str)
    content = validate(ctx, MESSAGE, msgtype)
    safe = check_safe(ctx, MESSAGE, msgtype or "")
    recipients, bad_users, bad_parties, bad_tags, any_valid = resolve_targets(ctx, touser, toparty, totag)
    echo: dict[str, Any] = {"invaliduser": "|".join(bad_users)}
    if bad_parties:
        echo["invalidparty"] = "|".join(bad_parties)
    if bad_tags:
        echo["invalidtag"] = "|".join(bad_tags)
    if not any_valid:
        raise ApiError(81013, extra=echo)

    dedupe_reason = None
    msgid = t.next_id("m", 32)
    if ctx.get("enable_duplicate_check", int, 0) == 1:
        interval = ctx.get("duplicate_check_interval", int, 1800)
        if not 0 < interval <= 4 * 3600:
            raise ApiError(40058, "duplicate_check_interval must be 1-14400")
        digest = hashlib.sha256(json.dumps(ctx.body, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
        seen = d.dedupe.get((agentid, digest))
        if seen is not None and ctx.now < seen[0]:
            dedupe_reason, msgid = "duplicate", seen[1]
        else:
            d.dedupe[(agentid, digest)] = (ctx.now + interval, msgid)

    msg = Message(msgid if dedupe_reason is None else t.next_id("m", 32), t.next_msg_seq(), ctx.now, MESSAGE,
                  msgtype or "", content, safe, agentid)  # fmt: skip
    msg.request = {"touser": touser, "toparty": toparty, "totag": totag}
    now, lim = ctx.now, t.limiter
    app_daily = max(1, len(d.users)) * f.message_app_daily_per_account
    for key, user in recipients.items():
        msg.spelling[key] = user.userid
        reason = dedupe_reason
        if reason is None and user.status in (2, 5):
            reason = "disabled" if user.status == 2 else "left"
        if reason is None:
            checks = (
                (("message_member_min", agentid, key), 60, f.message_member_per_minute, "member_per_minute"),
                (("message_member_hour", agentid, key), 3600, f.message_member_per_hour, "member_per_hour"),
                (("message_app_day", agentid), DAY, app_daily, "app_per_day"),
            )
            for wkey, period, limit, why in checks:
                if lim.room(wkey, period, limit, now) <= 0:
                    reason = why
                    break
            else:
                for wkey, period, _limit, _why in checks:
                    lim.add(wkey, period, now)
        msg.recipients[key] = reason
    out = dict(echo)
    out["msgid"] = msgid
    if msgtype == "template_card" and dedupe_reason is None:
        msg.task_id = content.get("task_id") or None
        if msg.task_id:
            d.task_ids[(agentid, msg.task_id)] = msg.msgid
        if needs_response_code(content):
            msg.response_code = mint_response_code(t, agentid, msg.msgid)
            out["response_code"] = msg.response_code
    t.record_message(msg)
    return out


@endpoint("message/update_template_card", "POST", principals=APP, list_fields={"invaliduser": []})
def update_template_card(ctx: Ctx) -> dict[str, Any]:
    d = ctx.data
    agentid = ctx.get("agentid", int)
    if agentid is None:
        raise ApiError(41011)
    if agentid != ctx.app.agentid:
        raise ApiError(40056)
    code = ctx.get("response_code", str)
    rc = d.response_codes.get(code) if code else None
    if rc is None:
        raise ApiError(40058, "invalid response_code")
    if rc.agentid != agentid:
        raise ApiError(42015)
    if rc.used:
        raise ApiError(42022)
    if ctx.now >= rc.issued_at + ctx.flags.response_code_ttl:
        raise ApiError(40058, "response_code expired")
    button = ctx.get("button", dict)
    card = ctx.get("template_card", dict)
    if button is None and card is None:
        raise ApiError(40058, "button or template_card required")
    if button is not None and not ctx.get("replace_name", str, "", source=button):
        raise ApiError(40058, "button.replace_name missing")
    msg = d.messages[rc.msgid]
    userids = ctx.get("userids", list, [])
    partyids = ctx.get("partyids", list, [])
    tagids = ctx.get("tagids", list, [])
    if len(userids) > 1000 or len(partyids) > 100 or len(tagids) > 100:
        raise ApiError(40058, "too many targets")
    original = [k for k, r in msg.recipients.items() if r is None]
    invalid: list[str] = []
    if ctx.get("atall", int, 0) == 1:
        targets = original
    else:
        wanted, bad_users, _bp, _bt, _ok = resolve_targets(
            ctx, "|".join(str(x) for x in userids), "|".join(str(x) for x in partyids), "|".join(str(x) for x in tagids)
        )
        targets = [k for k in wanted if k in msg.recipients and msg.recipients[k] is None]
        invalid = bad_users + [wanted[k].userid.lower() for k in wanted if k not in targets]
        if not targets and not invalid:
            raise ApiError(40058, "no target")
    rc.used = True
    msg.updates.append(
        {
            "ts": ctx.now,
            "targets": [msg.spelling.get(k, k) for k in targets],
            "button": button,
            "template_card": card,
        }
    )
    return {"invaliduser": invalid}
