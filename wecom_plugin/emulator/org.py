"""Seeding the sandbox tenant: from an org file (YAML/JSON), a dict, or ``generated:N[:seed]``.

The file schema is documented in docs/emulator.md ("Org file"). ``generated:N[:seed]`` builds a
realistic company of N members (department tree with sub-teams and stores, Chinese names, pinyin
userids with some mixed-case ones, leaders, disabled/unactivated members, placeholder names, tags,
app chats made by our app and by another app, customer groups with external members, a departed
owner). The same N and seed always give the same tenant, secrets included.
"""

from __future__ import annotations

import copy
import hashlib
import json
import random
from pathlib import Path
from typing import Any

from .clock import DEFAULT_MANUAL_START
from .state import (
    USER_STATUSES,
    USERID_RE,
    App,
    AppChat,
    ContactSync,
    CorpData,
    CustomerGroup,
    Departed,
    Department,
    Robot,
    Tag,
    User,
    Visibility,
)

OUR_AGENTID = 1000002
OTHER_AGENTID = 1000005
STORE_APP_AGENTID = 1000007


class OrgError(ValueError):
    """The org file or spec is invalid; the message names the offending entry."""


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------
def load_org(source: Any) -> CorpData:
    """Build corp state from ``"generated:N[:seed]"``, a path to a .yaml/.yml/.json file, or a dict."""
    if isinstance(source, dict):
        return build_corp(source)
    return build_corp(org_spec(source))


def org_spec(source: Any) -> dict[str, Any]:
    """The org mapping behind ``source`` (a copy), e.g. to adjust it before :func:`build_corp`."""
    if isinstance(source, dict):
        return copy.deepcopy(source)
    if isinstance(source, Path):
        return _read_file(source)
    if isinstance(source, str):
        if source.startswith("generated:"):
            parts = source.split(":")
            try:
                n = int(parts[1])
                seed = int(parts[2]) if len(parts) > 2 else 0
            except (IndexError, ValueError) as exc:
                raise OrgError(f"expected generated:N[:seed], got {source!r}") from exc
            return generate_org(n, seed)
        return _read_file(Path(source))
    raise OrgError(f"unsupported org source {source!r}")


def _read_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise OrgError(f"cannot read org file {path}: {exc}") from exc
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise OrgError(f"{path}: invalid YAML: {exc}") from exc
    else:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise OrgError(f"{path}: invalid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise OrgError(f"{path}: the top level must be a mapping")
    return data


def _req(obj: dict[str, Any], key: str, typ: type | tuple[type, ...], where: str) -> Any:
    if key not in obj:
        raise OrgError(f"{where}: missing {key!r}")
    value = obj[key]
    if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        raise OrgError(f"{where}: {key!r} has the wrong type ({type(value).__name__})")
    return value


def _list(obj: dict[str, Any], key: str, where: str) -> list[Any]:
    value = obj.get(key, [])
    if value is None:
        return []
    if not isinstance(value, list):
        raise OrgError(f"{where}: {key!r} must be a list")
    return value


def user_from_dict(spec: dict[str, Any], data: CorpData, where: str = "user") -> User:
    """A :class:`User` from its org-file mapping, checked against ``data``'s departments."""
    if not isinstance(spec, dict):
        raise OrgError(f"{where}: must be a mapping")
    userid = _req(spec, "userid", str, where)
    where = f"user {userid!r}"
    if not USERID_RE.match(userid):
        raise OrgError(f"{where}: invalid userid (1-64 chars of letters, digits, _-@., starting alphanumeric)")
    name = _req(spec, "name", str, where)
    if not 1 <= len(name) <= 64:
        raise OrgError(f"{where}: name must be 1-64 characters")
    depts = spec.get("department", [1])
    if not isinstance(depts, list) or not depts or not all(isinstance(x, int) for x in depts):
        raise OrgError(f"{where}: department must be a non-empty list of ids")
    for dep in depts:
        if dep not in data.departments:
            raise OrgError(f"{where}: unknown department {dep}")
    if len(depts) > 20:
        raise OrgError(f"{where}: at most 20 departments")
    n = len(depts)
    order = spec.get("order", [0] * n)
    leader = spec.get("is_leader_in_dept", [0] * n)
    if len(order) != n or len(leader) != n:
        raise OrgError(f"{where}: order and is_leader_in_dept must be as long as department")
    status = spec.get("status", 1)
    if status not in USER_STATUSES:
        raise OrgError(f"{where}: status must be one of {USER_STATUSES}")
    main = spec.get("main_department", depts[0])
    if main not in depts:
        raise OrgError(f"{where}: main_department must be one of its departments")
    position = spec.get("position", "")
    if len(position) > 128:
        raise OrgError(f"{where}: position is at most 128 characters")
    gender = str(spec.get("gender", "0"))
    if gender not in ("0", "1", "2"):
        raise OrgError(f"{where}: gender must be 0, 1 or 2")
    return User(
        userid=userid,
        name=name,
        departments=list(depts),
        order=[int(x) for x in order],
        is_leader_in_dept=[int(x) for x in leader],
        main_department=main,
        position=position,
        status=status,
        direct_leader=[str(x) for x in spec.get("direct_leader", [])],
        mobile=str(spec.get("mobile", "")),
        gender=gender,
        email=str(spec.get("email", "")),
        biz_mail=str(spec.get("biz_mail", "")),
        avatar=str(spec.get("avatar", "")),
        alias=str(spec.get("alias", "")),
        telephone=str(spec.get("telephone", "")),
        address=str(spec.get("address", "")),
        english_name=str(spec.get("english_name", "")),
        external_position=str(spec.get("external_position", "")),
        customer_contact=bool(spec.get("customer_contact", True)),
        extattr=extattr_from(spec.get("extattr"), where),
    )


def extattr_from(spec: Any, where: str = "extattr") -> list[dict[str, Any]]:
    """Custom fields (自定义字段) as ``user/get`` lists them in ``extattr.attrs`` (§2.4): a list of
    ``{"type":0,"name":..,"text":{"value":..}}`` (or ``{"type":1,"name":..,"web":{..}}``), given as
    that list or as ``{"attrs": [...]}``. A ``{"name":..,"value":..}`` shorthand becomes a text field."""
    if spec is None:
        return []
    attrs = spec.get("attrs") if isinstance(spec, dict) else spec
    if not isinstance(attrs, list):
        raise OrgError(f"{where}: extattr must be a list of custom fields (or {{'attrs': [...]}})")
    out: list[dict[str, Any]] = []
    for attr in attrs:
        if not isinstance(attr, dict) or not isinstance(attr.get("name"), str) or not attr["name"]:
            raise OrgError(f"{where}: every custom field needs a name")
        if "value" in attr and "text" not in attr and "web" not in attr:
            attr = {"type": 0, "name": attr["name"], "text": {"value": str(attr["value"])}}
        out.append(json.loads(json.dumps(attr)))
    return out


def _visibility(spec: Any, where: str) -> Visibility:
    if spec is None:
        return Visibility()
    if not isinstance(spec, dict):
        raise OrgError(f"{where}: visibility must be a mapping")
    return Visibility(
        departments={int(x) for x in spec.get("departments", [])},
        users={str(x).lower() for x in spec.get("users", [])},
        tags={int(x) for x in spec.get("tags", [])},
    )


def build_corp(spec: dict[str, Any]) -> CorpData:
    """Validate an org mapping (docs/emulator.md "Org file") and build the corp."""
    if not isinstance(spec, dict):
        raise OrgError("the org must be a mapping")
    corp_id = _req(spec, "corp_id", str, "org")
    data = CorpData(corp_id=corp_id, corp_name=str(spec.get("corp_name", "示例企业")), seed=int(spec.get("seed", 0)))

    for i, raw in enumerate(_list(spec, "departments", "org")):
        where = f"departments[{i}]"
        if not isinstance(raw, dict):
            raise OrgError(f"{where}: must be a mapping")
        dep_id = _req(raw, "id", int, where)
        if dep_id in data.departments:
            raise OrgError(f"{where}: duplicate department id {dep_id}")
        name = _req(raw, "name", str, where)
        if not 1 <= len(name) <= 32:
            raise OrgError(f"{where}: name must be 1-32 characters")
        parent = raw.get("parentid", 0 if dep_id == 1 else 1)
        data.departments[dep_id] = Department(
            dep_id, name, int(parent), int(raw.get("order", 0)), raw.get("name_en", "")
        )
    if 1 not in data.departments:
        raise OrgError("departments: the root department (id 1) is required")
    for dep in data.departments.values():
        if dep.id != 1 and dep.parentid not in data.departments:
            raise OrgError(f"department {dep.id}: unknown parentid {dep.parentid}")
    data.rebuild_indexes()
    for dep in data.departments.values():  # cycles: every department must reach the root
        if data.depth(dep.id) >= 64:
            raise OrgError(f"department {dep.id}: the tree has a cycle")
        if data.depth(dep.id) > 15:
            raise OrgError(f"department {dep.id}: more than 15 levels")

    for i, raw in enumerate(_list(spec, "users", "org")):
        user = user_from_dict(raw, data, f"users[{i}]")
        if user.key in data.users:
            raise OrgError(f"users[{i}]: duplicate userid {user.userid!r} (userids are case-insensitive)")
        data.users[user.key] = user
    for i, raw in enumerate(_list(spec, "departed_users", "org")):
        where = f"departed_users[{i}]"
        userid = _req(raw, "userid", str, where)
        if userid.lower() in data.users:
            raise OrgError(f"{where}: {userid!r} is also an active user")
        data.departed[userid.lower()] = Departed(
            userid, str(raw.get("name", userid)), float(raw.get("departed_at", DEFAULT_MANUAL_START - 86400))
        )

    for i, raw in enumerate(_list(spec, "tags", "org")):
        where = f"tags[{i}]"
        tagid = _req(raw, "tagid", int, where)
        tag = Tag(tagid, _req(raw, "tagname", str, where))
        for uid in _list(raw, "users", where):
            if str(uid).lower() not in data.users:
                raise OrgError(f"{where}: unknown user {uid!r}")
            tag.users[str(uid).lower()] = None
        for p in _list(raw, "parties", where):
            if p not in data.departments:
                raise OrgError(f"{where}: unknown department {p}")
            tag.parties.append(p)
        data.tags[tagid] = tag

    for i, raw in enumerate(_list(spec, "apps", "org")):
        where = f"apps[{i}]"
        app = App(
            agentid=_req(raw, "agentid", int, where),
            name=str(raw.get("name", "app")),
            secret=_req(raw, "secret", str, where),
            created_after_2022=bool(raw.get("created_after_2022", True)),
            visibility=_visibility(raw.get("visibility"), where),
            trusted_ips=[str(x) for x in raw.get("trusted_ips", ["127.0.0.1"])],
            customer_contact=bool(raw.get("customer_contact", False)),
            trusted_domain=str(raw.get("trusted_domain", "")),
        )
        data.apps[app.agentid] = app
    if not data.apps:
        raise OrgError("apps: at least one self-built app is required")
    cs = spec.get("contact_sync")
    if cs is not None:
        data.contact_sync = ContactSync(
            secret=_req(cs, "secret", str, "contact_sync"),
            trusted_ips=[str(x) for x in cs.get("trusted_ips", ["127.0.0.1"])],
            old_ips=[str(x) for x in cs.get("old_ips", [])],
            enforce_trusted_ip=bool(cs.get("enforce_trusted_ip", True)),
        )
    data.foreign_secrets = {str(x) for x in spec.get("foreign_secrets", [])}

    for i, raw in enumerate(_list(spec, "appchats", "org")):
        where = f"appchats[{i}]"
        chatid = _req(raw, "chatid", str, where)
        members: dict[str, str] = {}
        for uid in _list(raw, "members", where):
            user = data.users.get(str(uid).lower())
            if user is None:
                raise OrgError(f"{where}: unknown member {uid!r}")
            members[user.key] = user.userid
        owner = str(raw.get("owner", next(iter(members.values()), ""))).lower() or None
        if owner is not None and owner not in members:
            raise OrgError(f"{where}: the owner must be a member")
        creator = int(raw.get("creator", next(iter(data.apps))))
        data.chats[chatid] = AppChat(
            chatid,
            str(raw.get("name", "")),
            owner,
            members,
            creator,
            float(raw.get("created_at", DEFAULT_MANUAL_START)),
        )
    for i, raw in enumerate(_list(spec, "robots", "org")):
        where = f"robots[{i}]"
        robot = Robot(_req(raw, "key", str, where), _req(raw, "chatid", str, where), str(raw.get("name", "机器人")))
        if robot.chatid not in data.chats:
            raise OrgError(f"{where}: unknown chat {robot.chatid!r}")
        data.robots[robot.key] = robot
    for i, raw in enumerate(_list(spec, "customer_groups", "org")):
        where = f"customer_groups[{i}]"
        members = []
        for j, m in enumerate(_list(raw, "members", where)):
            mtype = int(m.get("type", 1))
            entry = {
                "userid": _req(m, "userid", str, f"{where}.members[{j}]"),
                "type": mtype,
                "join_time": int(m.get("join_time", DEFAULT_MANUAL_START)),
                "join_scene": int(m.get("join_scene", 1)),
                "name": str(m.get("name", m["userid"])),
                "group_nickname": str(m.get("group_nickname", "")),
            }
            if m.get("invitor"):
                entry["invitor"] = {"userid": str(m["invitor"])}
            if mtype == 2 and m.get("unionid"):
                entry["unionid"] = str(m["unionid"])
            members.append(entry)
        data.customer_groups[_req(raw, "chat_id", str, where)] = CustomerGroup(
            chat_id=raw["chat_id"],
            name=str(raw.get("name", "")),
            owner=_req(raw, "owner", str, where),
            create_time=int(raw.get("create_time", DEFAULT_MANUAL_START)),
            members=members,
            notice=str(raw.get("notice", "")),
            admins=[str(x) for x in raw.get("admins", [])],
        )
    data.rebuild_indexes()
    return data


# --------------------------------------------------------------------------------------------------
# Generator
# --------------------------------------------------------------------------------------------------
SURNAMES = [
    ("王", "wang"), ("李", "li"), ("张", "zhang"), ("刘", "liu"), ("陈", "chen"), ("杨", "yang"), ("黄", "huang"),
    ("赵", "zhao"), ("吴", "wu"), ("周", "zhou"), ("徐", "xu"), ("孙", "sun"), ("马", "ma"), ("朱", "zhu"),
    ("胡", "hu"), ("郭", "guo"), ("何", "he"), ("高", "gao"), ("林", "lin"), ("罗", "luo"), ("郑", "zheng"),
    ("梁", "liang"), ("谢", "xie"), ("宋", "song"), ("唐", "tang"), ("许", "xu"), ("韩", "han"), ("冯", "feng"),
    ("邓", "deng"), ("曹", "cao"), ("彭", "peng"), ("曾", "zeng"), ("肖", "xiao"), ("田", "tian"), ("董", "dong"),
    ("袁", "yuan"), ("潘", "pan"), ("蒋", "jiang"), ("蔡", "cai"), ("余", "yu"), ("杜", "du"), ("叶", "ye"),
    ("程", "cheng"), ("苏", "su"), ("魏", "wei"), ("吕", "lv"), ("丁", "ding"), ("任", "ren"), ("沈", "shen"),
    ("姚", "yao"), ("卢", "lu"), ("姜", "jiang"), ("崔", "cui"), ("钟", "zhong"), ("谭", "tan"), ("陆", "lu"),
    ("汪", "wang"), ("范", "fan"), ("金", "jin"), ("石", "shi"), ("廖", "liao"), ("贾", "jia"), ("夏", "xia"),
    ("韦", "wei"), ("方", "fang"), ("白", "bai"), ("邹", "zou"), ("孟", "meng"), ("熊", "xiong"), ("秦", "qin"),
    ("邱", "qiu"), ("江", "jiang"), ("尹", "yin"), ("薛", "xue"), ("段", "duan"), ("雷", "lei"), ("侯", "hou"),
    ("龙", "long"), ("史", "shi"), ("陶", "tao"), ("黎", "li"), ("贺", "he"), ("顾", "gu"), ("毛", "mao"),
    ("欧阳", "ouyang"), ("司马", "sima"), ("上官", "shangguan"),
]  # fmt: skip
GIVEN = [
    ("伟", "wei"), ("芳", "fang"), ("娜", "na"), ("敏", "min"), ("静", "jing"), ("丽", "li"), ("强", "qiang"),
    ("磊", "lei"), ("军", "jun"), ("洋", "yang"), ("勇", "yong"), ("艳", "yan"), ("杰", "jie"), ("娟", "juan"),
    ("涛", "tao"), ("明", "ming"), ("超", "chao"), ("秀", "xiu"), ("霞", "xia"), ("平", "ping"), ("刚", "gang"),
    ("英", "ying"), ("华", "hua"), ("玉", "yu"), ("建", "jian"), ("国", "guo"), ("文", "wen"), ("志", "zhi"),
    ("海", "hai"), ("欣", "xin"), ("宇", "yu"), ("浩", "hao"), ("晨", "chen"), ("博", "bo"), ("思", "si"),
    ("雨", "yu"), ("佳", "jia"), ("子", "zi"), ("轩", "xuan"), ("涵", "han"), ("然", "ran"), ("睿", "rui"),
    ("琳", "lin"), ("婷", "ting"), ("鹏", "peng"), ("辉", "hui"), ("斌", "bin"), ("鑫", "xin"), ("宁", "ning"),
    ("慧", "hui"), ("丹", "dan"), ("红", "hong"), ("亮", "liang"), ("成", "cheng"), ("凯", "kai"), ("峰", "feng"),
    ("晓", "xiao"), ("春", "chun"), ("东", "dong"), ("飞", "fei"), ("云", "yun"), ("倩", "qian"), ("璐", "lu"),
    ("颖", "ying"), ("悦", "yue"), ("诗", "shi"), ("彤", "tong"), ("昊", "hao"), ("天", "tian"), ("俊", "jun"),
    ("嘉", "jia"), ("梓", "zi"), ("一", "yi"), ("可", "ke"), ("安", "an"), ("新", "xin"), ("立", "li"),
]  # fmt: skip
STORE_NAMES = [
    "南京东路店", "淮海中路店", "徐家汇店", "五角场店", "陆家嘴店", "中山公园店", "静安寺店", "虹桥店", "莘庄店",
    "七宝店", "松江店", "嘉定店", "宝山店", "川沙店", "金桥店", "张江店", "世纪大道店", "打浦桥店", "长寿路店",
    "大宁店", "曹杨店", "江湾店", "闵行店", "青浦店", "奉贤店", "临港店", "杭州西湖店", "苏州观前店", "无锡店",
    "宁波店",
]  # fmt: skip
EXTERNAL_NAMES = [
    "王先生",
    "李女士",
    "陈总",
    "刘经理",
    "张老师",
    "赵阿姨",
    "孙师傅",
    "周小姐",
    "吴工",
    "郑律师",
    "顾客老王",
    "小林",
]

# (name, name_en, parent key, weight, positions) ; weight 0 = a parent that only holds its head
_TREE: list[tuple[str, str, str, str | None, float, list[str]]] = [
    ("gmo", "总经理办公室", "GMO", None, 0.03, ["总经理", "副总经理", "总经理助理"]),
    ("office", "综合办公室", "General Office", None, 0.05, ["主任", "行政专员", "文秘", "档案管理员"]),
    ("hr", "人力资源部", "HR", None, 0.05, ["部长", "招聘专员", "薪酬专员", "培训专员"]),
    ("fin", "财务部", "Finance", None, 0.05, ["部长", "会计", "出纳", "财务分析师"]),
    ("it", "信息技术部", "IT", None, 0.01, ["部长"]),
    ("it_ops", "运维组", "Ops", "it", 0.04, ["组长", "运维工程师"]),
    ("it_dev", "开发组", "Dev", "it", 0.05, ["组长", "开发工程师", "测试工程师"]),
    ("it_sec", "信息安全组", "Security", "it", 0.02, ["组长", "安全工程师"]),
    ("sales", "销售部", "Sales", None, 0.01, ["总监"]),
    ("sales_east", "华东销售一组", "East 1", "sales", 0.08, ["组长", "销售代表", "客户经理"]),
    ("sales_south", "华南销售组", "South", "sales", 0.06, ["组长", "销售代表", "客户经理"]),
    ("sales_key", "大客户组", "Key Accounts", "sales", 0.05, ["组长", "大客户经理"]),
    ("mkt", "市场部", "Marketing", None, 0.06, ["经理", "市场专员", "品牌策划"]),
    ("cs", "客服中心", "Customer Service", None, 0.07, ["主管", "客服专员"]),
    ("stores", "门店运营部", "Stores", None, 0.02, ["部长", "运营专员"]),
]


def _allocate(n: int, weights: list[float], rng: random.Random) -> list[int]:
    total = sum(weights)
    raw = [n * w / total for w in weights]
    counts = [int(x) for x in raw]
    rest = n - sum(counts)
    order = sorted(range(len(weights)), key=lambda i: (-(raw[i] - counts[i]), rng.random()))
    for i in order[:rest]:
        counts[i] += 1
    return counts


def _secret(rng: random.Random) -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    return "".join(rng.choice(alphabet) for _ in range(43))


def _digest(text: str) -> str:
    return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()


def _alnum(rng: random.Random, n: int) -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
    return "".join(rng.choice(alphabet) for _ in range(n))


def generate_org(n: int, seed: int = 0) -> dict[str, Any]:
    """A realistic company of ``n`` members (5 <= n <= 100000) as an org mapping."""
    if not 5 <= n <= 100_000:
        raise OrgError("generated:N needs 5 <= N <= 100000")
    rng = random.Random(f"wecom-sandbox:{n}:{seed}")
    base = DEFAULT_MANUAL_START
    corp_id = "ww" + hashlib.sha256(f"corp:{seed}".encode()).hexdigest()[:16]
    corp_name = "星河零售科技有限公司"
    domain = "xinghe-retail.example.com"

    departments: list[dict[str, Any]] = [{"id": 1, "name": corp_name, "parentid": 0, "order": 100000000}]
    ids: dict[str, int] = {}
    next_id = 2
    for key, name, name_en, parent, _w, _p in _TREE:
        ids[key] = next_id
        departments.append(
            {"id": next_id, "name": name, "name_en": name_en, "parentid": ids[parent] if parent else 1,
             "order": 100000000 - next_id * 1000}
        )  # fmt: skip
        next_id += 1
    store_count = max(1, min(len(STORE_NAMES), n // 25))
    store_ids = []
    for i in range(store_count):
        departments.append(
            {"id": next_id, "name": STORE_NAMES[i], "parentid": ids["stores"], "order": 100000000 - next_id * 1000}
        )
        store_ids.append(next_id)
        next_id += 1

    slots: list[tuple[int, list[str]]] = [(ids[k], pos) for k, _n, _e, _p, _w, pos in _TREE]
    weights = [w for *_x, w, _pos in _TREE]
    store_weight = 0.28 / store_count
    for sid in store_ids:
        slots.append((sid, ["店长", "店员", "收银员", "导购"]))
        weights.append(store_weight)
    counts = _allocate(n - 1, weights, rng)  # the CEO is placed first
    counts[0] += 1

    used_ids: set[str] = set()
    used_mobiles: set[str] = set()
    users: list[dict[str, Any]] = []
    leader_of: dict[int, str] = {}

    def make_user(dep_id: int, position: str, is_leader: bool) -> dict[str, Any]:
        sn, sp = rng.choice(SURNAMES)
        g = [rng.choice(GIVEN) for _ in range(1 if rng.random() < 0.35 else 2)]
        name = sn + "".join(c for c, _ in g)
        given = "".join(p for _, p in g)
        base_id = sp + given
        if rng.random() < 0.07:
            base_id = sp.capitalize() + "".join(p.capitalize() for _, p in g)
        userid, k = base_id, 1
        while userid.lower() in used_ids:
            k += 1
            userid = f"{base_id}{k}"
        used_ids.add(userid.lower())
        mobile = ""
        while not mobile or mobile in used_mobiles:
            mobile = "1" + rng.choice(["38", "39", "58", "86", "35", "50", "77"]) + f"{rng.randrange(10**8):08d}"
        used_mobiles.add(mobile)
        gender = rng.choice(["1", "2"])
        return {
            "userid": userid,
            "name": name,
            "department": [dep_id],
            "order": [0],
            "is_leader_in_dept": [1 if is_leader else 0],
            "main_department": dep_id,
            "position": position,
            "status": 1,
            "mobile": mobile,
            "gender": gender,
            "email": f"{userid.lower()}@{domain}",
            "biz_mail": f"{userid.lower()}@xinghe.wecom.work",
            "avatar": f"https://wework.qpic.cn/wwpic/{_digest(userid)}/0",
            "alias": "",
            "telephone": "",
            "address": "上海市" if rng.random() < 0.8 else "杭州市",
        }

    for (dep_id, positions), count in zip(slots, counts, strict=True):
        for i in range(count):
            is_leader = i == 0
            pos = positions[0] if is_leader else rng.choice(positions[1:] or positions)
            u = make_user(dep_id, pos, is_leader)
            if is_leader:
                leader_of[dep_id] = u["userid"]
            users.append(u)
    # Parents without a head of their own (small N): their first child's head leads them too.
    parent_of = {d["id"]: d["parentid"] for d in departments}

    def head(dep_id: int) -> str | None:
        d = dep_id
        while d != 1 and d not in leader_of:
            d = parent_of[d]
        return leader_of.get(d)

    ceo = users[0]["userid"]
    for u in users:
        dep = u["department"][0]
        if u["is_leader_in_dept"][0]:
            boss = head(parent_of[dep]) if parent_of[dep] != 1 else (ceo if u["userid"] != ceo else None)
        else:
            boss = head(dep)
        u["direct_leader"] = [boss] if boss and boss != u["userid"] else []
    # A few IT people also work for the stores department (multi-department members).
    it_people = [
        u for u in users if u["department"][0] in (ids["it_ops"], ids["it_dev"]) and not u["is_leader_in_dept"][0]
    ]
    for u in it_people[: max(0, n // 60)]:
        u["department"].append(ids["stores"])
        u["order"].append(0)
        u["is_leader_in_dept"].append(0)

    ordinary = [u for u in users if not u["is_leader_in_dept"][0] and u["userid"] != ceo]
    rng.shuffle(ordinary)
    pick = iter(ordinary)
    n_disabled = max(1, n * 3 // 100) if n >= 20 else 0
    n_unactivated = max(1, n * 4 // 100) if n >= 20 else 0
    for _ in range(n_disabled):
        u = next(pick, None)
        if u:
            u["status"] = 2
    for _ in range(n_unactivated):
        u = next(pick, None)
        if u:
            u["status"] = 4
    if n >= 40:
        u = next(pick, None)
        if u:
            u["status"] = 5
    if n >= 10:
        u = next(pick, None)
        if u:  # a placeholder name: the name is the userid
            u["name"] = u["userid"]
        u = next(pick, None)
        if u:  # a test account left behind by IT
            used_ids.discard(u["userid"].lower())
            u["userid"] = "test01" if "test01" not in used_ids else "test01x"
            u["name"] = u["userid"]
            u["email"] = f"{u['userid']}@{domain}"
            u["status"] = 4
    if users[0]["userid"] != ceo:  # pragma: no cover - CEO is created first
        raise AssertionError
    users[0]["position"] = "总经理"

    # The apps, the contact-sync secret, a secret of another corp.
    apps = [
        {"agentid": OUR_AGENTID, "name": "群管理助手", "secret": _secret(rng), "created_after_2022": True,
         "visibility": {"departments": [1]}, "trusted_ips": ["127.0.0.1"], "customer_contact": True,
         "trusted_domain": "wecom-plugin.example.com"},
        {"agentid": OTHER_AGENTID, "name": "OA审批", "secret": _secret(rng), "created_after_2022": False,
         "visibility": {"departments": [1]}, "trusted_ips": [], "customer_contact": False,
         "trusted_domain": "oa.example.com"},
        {"agentid": STORE_APP_AGENTID, "name": "门店助手", "secret": _secret(rng), "created_after_2022": True,
         "visibility": {"departments": [ids["stores"]], "users": [ceo]}, "trusted_ips": ["127.0.0.1"],
         "customer_contact": False, "trusted_domain": "stores.example.com"},
    ]  # fmt: skip
    contact_sync = {"secret": _secret(rng), "trusted_ips": ["127.0.0.1"], "old_ips": []}

    def members_of(*dep_ids: int) -> list[str]:
        wanted = set(dep_ids)
        return [u["userid"] for u in users if wanted & set(u["department"]) and u["status"] in (1, 4)]

    def chatid() -> str:
        return "wr" + _alnum(rng, 20)

    it_members = members_of(ids["it"], ids["it_ops"], ids["it_dev"], ids["it_sec"])
    store_heads = [leader_of[s] for s in store_ids if s in leader_of]
    stores_head = head(ids["stores"])
    office_members = members_of(ids["office"], ids["hr"])
    appchats = []
    if len(it_members) >= 2:
        it_head = head(ids["it"])
        owner = it_head if it_head in it_members else it_members[0]
        appchats.append({"chatid": chatid(), "name": "信息技术部工作群", "owner": owner, "members": it_members,
                         "creator": OUR_AGENTID})  # fmt: skip
    store_chat = list(dict.fromkeys([x for x in [stores_head, *store_heads] if x]))
    if len(store_chat) >= 2:
        appchats.append({"chatid": chatid(), "name": "门店运营通知群", "owner": store_chat[0], "members": store_chat,
                         "creator": OUR_AGENTID})  # fmt: skip
    if len(office_members) >= 2:
        appchats.append({"chatid": chatid(), "name": "综合办公室通知群", "owner": office_members[0],
                         "members": office_members, "creator": OTHER_AGENTID})  # fmt: skip
    everyone_else = [u["userid"] for u in users if u["status"] == 1][:50]
    if len(everyone_else) >= 2:
        appchats.append({"chatid": chatid(), "name": "OA审批通知群", "owner": everyone_else[0],
                         "members": everyone_else, "creator": OTHER_AGENTID})  # fmt: skip
    robots = []
    if appchats:
        key = "-".join(_alnum(rng, k).lower() for k in (8, 4, 4, 4, 12))
        robots.append({"key": key, "chatid": appchats[0]["chatid"], "name": "值班机器人"})

    # Tags.
    active = [u["userid"] for u in users if u["status"] == 1]
    tags = [
        {"tagid": 1, "tagname": "党员", "users": sorted(rng.sample(active, max(1, len(active) // 10)))},
        {"tagid": 2, "tagname": "新员工", "users": sorted(rng.sample(active, max(1, len(active) // 20)))},
        {"tagid": 3, "tagname": "门店店长", "users": store_heads},
        {
            "tagid": 4,
            "tagname": "信息安全联络人",
            "users": [x for x in (head(ids["it_sec"]), head(ids["office"])) if x],
        },
        {"tagid": 5, "tagname": "值班人员", "users": [], "parties": [ids["it_ops"]]},
    ]

    # Customer groups: owned by salespeople; two belong to a salesperson who has left.
    sales = [u for u in users if set(u["department"]) & {ids["sales_east"], ids["sales_south"], ids["sales_key"]}
             and u["status"] == 1]  # fmt: skip
    departed_id = "zhoujie_left"
    departed = [{"userid": departed_id, "name": "周杰", "departed_at": base - 10 * 86400}]
    groups = []

    def external_members(k: int, join: int) -> list[dict[str, Any]]:
        out = []
        for _ in range(k):
            out.append({"userid": "wm" + _alnum(rng, 26), "type": 2, "name": rng.choice(EXTERNAL_NAMES),
                        "join_time": join + rng.randrange(86400), "join_scene": rng.choice([1, 2, 3]),
                        "unionid": "oz" + _alnum(rng, 26) if rng.random() < 0.5 else ""})  # fmt: skip
        return out

    for i, owner in enumerate(sales[: max(1, min(8, len(sales)))]):
        created = int(base - (40 + i) * 86400)
        colleagues = [u for u in sales if u is not owner][:2]
        members = [{"userid": owner["userid"], "type": 1, "name": owner["name"], "join_time": created, "join_scene": 1}]
        for c in colleagues:
            members.append({"userid": c["userid"], "type": 1, "name": c["name"], "join_time": created + 60,
                            "join_scene": 1, "invitor": owner["userid"]})  # fmt: skip
        members += external_members(3 + i % 5, created)
        groups.append({"chat_id": "wr" + _alnum(rng, 28), "name": f"{owner['name']}的客户群{i + 1}",
                       "owner": owner["userid"], "create_time": created, "notice": "文明沟通，拒绝广告",
                       "members": members, "admins": [c["userid"] for c in colleagues[:1]]})  # fmt: skip
    for i in range(2):
        created = int(base - (200 + i) * 86400)
        members = [{"userid": departed_id, "type": 1, "name": "周杰", "join_time": created, "join_scene": 1}]
        members += external_members(4, created)
        groups.append({"chat_id": "wr" + _alnum(rng, 28), "name": f"周杰的VIP客户群{i + 1}", "owner": departed_id,
                       "create_time": created, "members": members})  # fmt: skip

    return {
        "corp_id": corp_id,
        "corp_name": corp_name,
        "seed": seed,
        "apps": apps,
        "contact_sync": contact_sync,
        "foreign_secrets": [_secret(rng)],
        "departments": departments,
        "users": users,
        "departed_users": departed,
        "tags": tags,
        "appchats": appchats,
        "robots": robots,
        "customer_groups": groups,
    }
