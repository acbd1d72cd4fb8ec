"""Settings, health endpoints, the admin bootstrap and the compose file."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from django.core.management import call_command

ROOT = Path(__file__).resolve().parent.parent


def run_settings(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "import django.conf as c; c.settings.DEBUG; print('ok')"],
        cwd=ROOT, env={**os.environ, "DJANGO_SETTINGS_MODULE": "dashboard.settings", **env},
        capture_output=True, text=True,
    )  # fmt: skip


def test_production_settings_refuse_the_development_secret_key():
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SECRET_KEY"}
    result = subprocess.run(
        [sys.executable, "-c", "import django.conf as c; c.settings.DEBUG"],
        cwd=ROOT, env={**env, "DJANGO_SETTINGS_MODULE": "dashboard.settings", "DJANGO_DEBUG": "0"},
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY is the development key" in result.stderr


def test_production_settings_start_with_a_real_secret_key():
    result = run_settings({"DJANGO_DEBUG": "0", "DJANGO_SECRET_KEY": "x" * 50})
    assert result.stdout.strip() == "ok", result.stderr


def test_settings_without_a_database_say_what_to_do(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    result = subprocess.run(
        [sys.executable, "-c", "import django.conf as c; c.settings.DEBUG"],
        cwd=ROOT,
        env={**env, "DJANGO_SETTINGS_MODULE": "dashboard.settings",
             "FLOWSCOPE_STATE_DIR": str(tmp_path)},
        capture_output=True, text=True,
    )  # fmt: skip
    assert "DATABASE_URL is not set" in result.stderr


def test_healthz_answers(client):
    assert client.get("/healthz").json() == {"status": "ok"}


@pytest.mark.django_db
def test_readyz_finds_the_migrated_database(client):
    # NATS and a tap's heartbeat are checked too: tests/test_health.py, with real ones
    response = client.get("/readyz")
    assert response.json()["checks"]["database"] == "ok"


@pytest.mark.django_db
def test_ensure_admin_creates_admin_once_and_prints_the_password(capsys, monkeypatch):
    from django.contrib.auth.models import User

    monkeypatch.delenv("FLOWSCOPE_ADMIN_PASSWORD", raising=False)
    call_command("ensure_admin")
    out = capsys.readouterr().out
    password = out.split("password: ")[1].split()[0]
    admin = User.objects.get(username="admin")
    assert admin.check_password(password) and admin.is_superuser
    assert admin.groups.filter(name="admin").exists()
    call_command("ensure_admin")
    assert "password" not in capsys.readouterr().out  # shown only the first time


@pytest.mark.django_db
def test_ensure_admin_takes_the_password_from_the_environment(monkeypatch):
    from django.contrib.auth.models import User

    monkeypatch.setenv("FLOWSCOPE_ADMIN_PASSWORD", "given-password-42")
    call_command("ensure_admin")
    assert User.objects.get(username="admin").check_password("given-password-42")


@pytest.mark.django_db
def test_anonymous_visitors_are_sent_to_login(client):
    response = client.get("/")
    assert response.status_code == 302 and response.url.startswith("/login/")


def test_compose_file_is_valid_and_every_command_exists():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"nats", "postgres", "migrate", "tap", "web", "demo"} <= set(services)
    for name in ("nats", "postgres", "web"):
        assert "healthcheck" in services[name], name
    from django.core.management import get_commands

    commands = get_commands()
    for name, service in services.items():
        cmd = service.get("command")
        if not cmd or ("image" in service and "build" not in service):
            continue
        argv = cmd if isinstance(cmd, list) else cmd.split()
        if argv[:2] == ["python", "manage.py"]:
            assert argv[2] in commands, f"{name}: manage.py {argv[2]} does not exist"
        elif argv[0] == "daphne":
            module, _, attr = argv[-1].partition(":")
            mod = __import__(module, fromlist=[attr])
            assert hasattr(mod, attr), f"{name}: {argv[-1]} does not exist"
        else:
            pytest.fail(f"{name}: unexpected command {argv}")


@pytest.mark.django_db
def test_a_nul_in_the_address_is_a_clear_400_not_a_crash(client, django_user_model):
    user = django_user_model.objects.create_user("nul", password="pw-for-nul-test")
    client.force_login(user)
    for url in ("/streams/ORDERS%00/", "/streams/ORDERS/?q=%00", "/login/?next=/%00"):
        response = client.get(url)
        assert response.status_code == 400, url
        assert b"NUL character" in response.content
    missing = client.get("/streams/NOPE/")  # a plain unknown name: our page, not found
    assert missing.status_code == 404 and b"has not seen a stream of that name" in missing.content


def test_invisible_characters_from_the_wire_are_shown_as_escapes():
    from dashboard.templatetags.humanize_bytes import visible

    assert visible("odd.\u202eevil") == "odd.\\u202eevil"  # a right-to-left override
    assert visible("a\u200bb\x07") == "a\\u200bb\\u0007"  # zero-width space, a control
    assert visible("bell\x07") == "bell\\u0007"  # a control in otherwise plain ASCII
    assert visible("ünïcödé.ORDERS") == "ünïcödé.ORDERS"  # ordinary letters stay
    assert visible(None) == ""


@pytest.mark.django_db
def test_log_out_ends_the_session(client, django_user_model):
    user = django_user_model.objects.create_user("leaver", password="pw-for-logout-test")
    client.force_login(user)
    assert client.get("/").status_code == 200
    response = client.post("/logout/")  # what the nav's "Log out" button sends
    assert response.status_code == 302
    assert client.get("/").status_code == 302  # back to the login page


def test_a_get_of_the_logout_address_offers_the_button_and_logs_no_one_out(
    client, django_user_model
):
    user = django_user_model.objects.create_user("visitor", password="pw-for-logout-get")
    client.force_login(user)
    page = client.get("/logout/")
    assert page.status_code == 200
    assert b'method="post" action="/logout/"' in page.content and b"visitor" in page.content
    assert client.get("/").status_code == 200  # still logged in: a GET changes nothing
    client.logout()
    assert b"You are not logged in" in client.get("/logout/").content


def test_a_streams_newest_events_come_by_sequence_and_by_time_without_one(db):
    """The stream page's newest events: sequenced ones by seq, ones without a sequence (a
    subject subscription) by time, merged newest first."""
    from datetime import UTC, datetime, timedelta

    from django.db import connection

    from dashboard.models import Event, Stream
    from dashboard.pages.streams import newest_events
    from eventbus.partitions import partition_name

    t0 = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
    with connection.cursor() as cur:
        cur.execute(
            f"CREATE TABLE IF NOT EXISTS {partition_name(t0.date())} PARTITION OF "
            "flowscope_event FOR VALUES FROM (%s) TO (%s)",
            [t0.replace(hour=0), t0.replace(hour=0) + timedelta(days=1)],
        )
    stream = Stream.objects.create(name="MIXED", created=t0, retention="workqueue")
    other = Stream.objects.create(name="OTHER", created=t0, retention="limits")

    def event(s: Stream, seq: int | None, minute: int) -> None:
        Event.objects.create(stream=s, seq=seq, ts=t0 + timedelta(minutes=minute), subject="x",
                             size=0, payload=b"", recorded_at=t0)  # fmt: skip

    for i in range(5):
        event(stream, None, i)  # minutes 0..4, as published
    for seq in range(1, 4):
        event(stream, seq, 10 + seq)  # minutes 11..13, republished later with sequences
    event(other, 99, 30)
    got = [(e.seq, e.ts.minute) for e in newest_events(stream, limit=6)]
    assert got == [(3, 13), (2, 12), (1, 11), (None, 4), (None, 3), (None, 2)]
    assert [e.seq for e in newest_events(other)] == [99]


def test_a_streams_newest_events_are_read_in_index_order_without_a_sort(db):
    """Both queries behind the stream page's newest events come in order from the (stream_id,
    seq, ts) index: with sequential scans off, a plan that needed a Sort would show one."""
    from datetime import UTC, datetime

    from django.db import connection

    from dashboard.models import Stream
    from dashboard.pages.streams import newest_queries
    from eventbus.partitions import partition_name

    t0 = datetime(2026, 11, 29, tzinfo=UTC)
    with connection.cursor() as cur:
        cur.execute(
            f"CREATE TABLE IF NOT EXISTS {partition_name(t0.date())} PARTITION OF "
            "flowscope_event FOR VALUES FROM ('2026-11-29') TO ('2026-11-30')"
        )
        stream = Stream.objects.create(name="PLAN", created=t0, retention="limits")
        for query in newest_queries(stream, 50):
            sql, params = query.query.sql_with_params()
            cur.execute("SET LOCAL enable_seqscan = off")
            cur.execute("EXPLAIN " + sql, params)
            plan = "\n".join(row[0] for row in cur.fetchall())
            assert "Sort" not in plan and "stream_id_seq_ts" in plan, plan


def test_a_nats_server_is_logged_as_a_url_without_its_credentials():
    from urllib.parse import urlparse

    from eventbus.natsconn import shown

    assert shown(urlparse("nats://alice:s3cret@10.0.0.5:4222")) == "nats://10.0.0.5:4222"
    assert shown(urlparse("tls://nats.example.com")) == "tls://nats.example.com"
    assert shown(None) == ""


def test_the_migrations_cover_the_models(db):
    """A model changed without its migration fails here, not on someone's `migrate`."""
    from django.core.management import call_command

    call_command("makemigrations", "--check", "--dry-run", verbosity=0)
