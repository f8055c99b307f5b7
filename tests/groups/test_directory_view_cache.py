"""The loaded directory is reused between chats while the mirror is unchanged, and never after it changed."""

from __future__ import annotations

from wecom_plugin.domain.directory import MemberRecord
from wecom_plugin.extensions import db
from wecom_plugin.services import directory_mirror as mirror
from wecom_plugin.services.directory_view import current_view


def _write(app, **row) -> None:
    with app.app_context(), db.engine.begin() as conn:
        current = mirror.find_person(conn, row["userid"])
        mirror.upsert_member(conn, MemberRecord.from_api(row), mirror.Origin("sync"), current=current)


def test_a_view_is_reused_until_the_mirror_changes(make_app, db_url):
    app = make_app(DATABASE_URL=db_url)
    _write(app, userid="zhangsan", name="张三", department=[2], status=1)
    with app.app_context():
        first = current_view(db.engine)
        assert current_view(db.engine) is first  # nothing changed: no second load
        assert first.person("zhangsan").status == 1
    _write(app, userid="zhangsan", name="张三", department=[2], status=5)  # a departure
    with app.app_context():
        after = current_view(db.engine)
        assert after is not first and after.person("ZhangSan").status == 5
    _write(app, userid="lisi", name="李四", department=[2], status=1)  # a hire
    with app.app_context():
        assert current_view(db.engine).person("lisi") is not None
