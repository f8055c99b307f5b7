"""Health endpoints and the HTTP error contract."""

from __future__ import annotations

import sqlalchemy as sa

from wecom_plugin.extensions import db
from wecom_plugin.jobs.worker import Worker
from wecom_plugin.runtime import heartbeat

SECURITY_HEADERS = ("X-Content-Type-Options", "Strict-Transport-Security", "Content-Security-Policy")


def test_healthz_answers_without_touching_the_database(make_app, tmp_path):
    # A database path that cannot exist: liveness must not depend on the database.
    app = make_app(DATABASE_URL=f"sqlite:///{tmp_path}/missing/dir/db.sqlite3")
    response = app.test_client().get("/healthz")
    assert response.status_code == 200
    assert response.json == {"status": "ok"}


def test_readyz_is_ready_when_the_schema_is_at_head(app):
    response = app.test_client().get("/readyz")
    assert response.status_code == 200, response.json
    assert response.json["checks"] == {"database": "ok", "schema": "ok"}


def test_readyz_is_not_ready_when_the_schema_is_behind(app):
    with app.app_context():
        db.session.execute(sa.text("DELETE FROM alembic_version"))
        db.session.commit()
    response = app.test_client().get("/readyz")
    assert response.status_code == 503
    assert response.json["checks"]["schema"].startswith("at nothing")


def test_readyz_does_not_depend_on_workers_but_status_reports_them(app):
    client = app.test_client()
    assert client.get("/readyz").status_code == 200
    status = client.get("/status").json
    assert status["workers"]["fresh"] == 0
    assert status["healthy"] is False
    worker = Worker(app)
    with app.app_context():
        heartbeat.beat(db.engine, worker.owner, "worker")
        heartbeat.beat(db.engine, "clock-1", "clock")
    status = client.get("/status").json
    assert (status["workers"]["fresh"], status["clocks"]["fresh"], status["healthy"]) == (1, 1, True)


def test_status_counts_jobs_waiting_for_their_time_apart_from_those_due(app):
    """A job queued for later (a backoff, a prepared bulletin send) is no work for the workers yet."""
    from datetime import timedelta

    from wecom_plugin.runtime.queue import enqueue

    with app.app_context():
        enqueue("noop", {})
        enqueue("noop", {}, run_after=timedelta(minutes=5))
        enqueue("noop", {}, run_after=timedelta(minutes=5))
        db.session.commit()
    jobs = app.test_client().get("/status").json["jobs"]
    assert (jobs.get("ready"), jobs.get("waiting")) == (1, 2)


def test_errors_are_bilingual_json_without_tracebacks_and_carry_security_headers(sqlite_app):
    @sqlite_app.get("/_boom")
    def boom():
        raise RuntimeError("secret internals")

    client = sqlite_app.test_client()
    for path, status in (("/nope", 404), ("/_boom", 500)):
        response = client.get(path)
        assert response.status_code == status
        assert response.json["message_zh"] and response.json["message_en"]
        assert "secret internals" not in response.get_data(as_text=True)
        assert "Traceback" not in response.get_data(as_text=True)
        for header in SECURITY_HEADERS:
            assert header in response.headers
        assert response.headers["X-Request-ID"] == response.json["request_id"]


def test_bodies_over_64_kib_are_refused_before_any_parsing(sqlite_app):
    seen = []

    @sqlite_app.post("/_sink")
    def sink():
        seen.append(1)
        return "ok"

    client = sqlite_app.test_client()
    assert client.post("/_sink", data=b"x" * (64 * 1024 + 1)).status_code == 413
    assert seen == []
    assert client.post("/_sink", data=b"x" * (64 * 1024)).status_code == 200


def test_a_well_formed_request_id_is_echoed_and_a_bad_one_replaced(sqlite_app):
    client = sqlite_app.test_client()
    assert client.get("/healthz", headers={"X-Request-ID": "abcdef12-3456"}).headers["X-Request-ID"] == "abcdef12-3456"
    replaced = client.get("/healthz", headers={"X-Request-ID": "bad id; drop"}).headers["X-Request-ID"]
    assert replaced != "bad id; drop" and len(replaced) == 32
