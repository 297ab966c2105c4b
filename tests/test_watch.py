"""Issue 33.1-2 on real servers: under a real application load (sessions of the application's role), a migration
that holds its table's lock while the application queues behind it is cancelled once a session has waited past
the target's max_app_wait_s, rolled back whole, and the step fails with one sentence; without the load it runs, and
its record says which lock it held and what the application waited."""

import contextlib
import http.server
import os
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime

import psycopg
import pytest

from dbpromote import localstack as local_stack
from tests.harness import applied, target_changed

SLOW = """from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("core", "0008_default_task_statuses")]
    operations = [
        migrations.RunSQL(  # a rewrite that takes seconds under ACCESS EXCLUSIVE, as on a large table
            "ALTER TABLE core_task ADD COLUMN rewritten integer; SELECT pg_sleep(6);",
            "ALTER TABLE core_task DROP COLUMN rewritten;",
        ),
    ]
"""


NOT_ATOMIC = """from django.db import migrations


class Migration(migrations.Migration):
    atomic = False
    dependencies = [("core", "0008_default_task_statuses")]
    operations = [
        migrations.RunSQL(  # one statement that holds ACCESS EXCLUSIVE for seconds, as a rewrite of a large table
            ["DO $$ BEGIN ALTER TABLE core_task ADD COLUMN first integer; PERFORM pg_sleep(4); END $$"],
            ["ALTER TABLE core_task DROP COLUMN first"],
        ),
        migrations.RunSQL(
            ["ALTER TABLE core_task ADD COLUMN second integer"], ["ALTER TABLE core_task DROP COLUMN second"]
        ),
    ]
"""


class ApplicationLoad:
    """Sessions of the application's role reading core_task in a loop; the longest any query took."""

    def __init__(self, url: str, sessions: int = 2):
        self.url, self.longest, self.queries, self.stop = url, 0.0, 0, threading.Event()
        self.threads = [threading.Thread(target=self.run, daemon=True) for _ in range(sessions)]

    def run(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            while not self.stop.is_set():
                started = time.monotonic()
                conn.execute("SELECT count(*) FROM core_task")
                self.longest = max(self.longest, time.monotonic() - started)
                self.queries += 1
                time.sleep(0.02)

    def __enter__(self):
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for thread in self.threads:
            thread.join(10)


def under_load_past_one_second(stack, project_copy, name: str, migration: str, project_name: str):
    """Staging at the sample's 0008 and one more migration of the project's copy, migrated under the application's
    load with max_app_wait_s 1: how the step failed (pytest's ExceptionInfo) and the load."""
    from dbpromote.flows.environment import migrate_environment

    from dbpromote.errors import MigrationError

    (project_copy.folder / "core" / "migrations" / f"{name}.py").write_text(migration)
    project = project_copy(project_name)
    env = os.environ | {"DATABASE_URL": stack.database_url("staging")}
    migrate = [sys.executable, "manage.py", "migrate", "core", "0008_default_task_statuses", "-v0"]
    subprocess.run(migrate, cwd=project_copy.folder, env=env, check=True)
    with psycopg.connect(stack.database_url("staging"), autocommit=True) as conn:
        conn.execute("GRANT SELECT ON core_task TO django_app")  # what the RLS step grants on a promotion
    app_url = stack.database_url("staging", local_stack.APP_ROLE)
    with target_changed("staging", max_app_wait_s=1.0), ApplicationLoad(app_url) as load:
        with pytest.raises(MigrationError) as failed:
            migrate_environment(project, "staging")
    return failed, load, project


def test_a_migration_the_application_waits_behind_past_the_limit_is_cancelled_and_rolled_back(
    fresh_databases, project_copy
):
    from dbpromote.flows.environment import migrate_environment

    stack = fresh_databases
    failed, load, project = under_load_past_one_second(stack, project_copy, "0009_slow_rewrite", SLOW, "slow-rewrite")
    message = str(failed.value)
    assert message.startswith(
        "core.0009_slow_rewrite was cancelled on staging: it held AccessExclusiveLock on core_task and "
    ), message
    assert (
        "max_app_wait_s 1 s); it was rolled back, nothing of it is applied: run it in a maintenance window" in message
    )
    assert load.queries > 10 and load.longest < 6, load.longest  # cut short, not the 6 s the migration would hold
    assert applied(stack, "staging")[-1] == "core.0008_default_task_statuses"
    with psycopg.connect(stack.database_url("staging")) as conn:
        columns = conn.execute("SELECT column_name FROM information_schema.columns WHERE table_name = 'core_task'")
        assert "rewritten" not in {name for (name,) in columns}

    report = migrate_environment(project, "staging")  # nobody waits behind it now: it runs
    (result,) = report.migrations
    assert (result.label, result.strongest_lock, result.sessions_blocked) == (
        "core.0009_slow_rewrite",
        "AccessExclusiveLock",
        0,
    )
    assert result.duration_s >= 6  # RunSQL names no table to lock first: the watcher saw its lock
    assert applied(stack, "staging")[-1] == "core.0009_slow_rewrite"


def test_a_migration_that_is_not_atomic_is_stopped_between_statements_and_the_sentence_says_what_was_applied(
    fresh_databases, project_copy
):
    """It cannot be rolled back, and cancelling a statement half-way could leave half an operation: the statement
    the application waits behind finishes, and the next one never starts."""
    stack = fresh_databases
    failed, load, _ = under_load_past_one_second(stack, project_copy, "0009_not_atomic", NOT_ATOMIC, "not-atomic")
    message = str(failed.value)
    assert message.startswith(
        "core.0009_not_atomic is not atomic and was stopped between statements on staging: it held "
        "AccessExclusiveLock and "
    ), message
    assert (
        "(max_app_wait_s 1 s); applied before the stop: DO $$ BEGIN ALTER TABLE core_task ADD COLUMN first integer; "
        "PERFORM pg_sleep(4); END $$; the rest was not run and the migration is not recorded as applied: " in message
    ), message
    assert 1 < load.longest < 6, load.longest  # the statement ran to its end; no other one started
    assert applied(stack, "staging")[-1] == "core.0008_default_task_statuses"
    with psycopg.connect(stack.database_url("staging")) as conn:
        columns = conn.execute("SELECT column_name FROM information_schema.columns WHERE table_name = 'core_task'")
        added = {name for (name,) in columns} & {"first", "second"}
    assert added == {"first"}  # exactly what the sentence says


class Unhealthy(http.server.BaseHTTPRequestHandler):
    """An application that answers its health URL with a 500 (and counts the asks)."""

    asked = 0

    def do_GET(self):  # noqa: N802 - http.server's name
        Unhealthy.asked += 1
        self.send_response(500)
        self.end_headers()

    def log_message(self, *args):
        pass


def dbpromote_events(target: str, since: datetime, timeout_s: float = 30) -> list[str]:
    """The names of the dbpromote events the Prefect server holds for a target since then, once the health one
    arrived."""
    from prefect import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventOccurredFilter, EventResourceFilter

    wanted = EventFilter(
        occurred=EventOccurredFilter(since=since),
        event=EventNameFilter(prefix=["dbpromote."]),
        resource=EventResourceFilter(id=[f"dbpromote.target.{target}"]),
    )
    deadline = time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        while True:
            names = [event.event for event in client.read_events(filter=wanted, limit=50).events]
            if any(name.startswith("dbpromote.health.") for name in names) or time.monotonic() > deadline:
                return names
            time.sleep(0.5)


def test_an_unhealthy_application_after_staging_stops_the_promotion_before_production(fresh_databases):
    from dbpromote.flows.promote import promote

    from dbpromote.errors import VerificationError

    stack = fresh_databases
    since = datetime.now(UTC)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Unhealthy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/health"
    smoke = "manage.py check --database default"
    try:
        with target_changed("staging", health_url=url, health_tries=2, health_within_s=1, smoke_command=smoke):
            with pytest.raises(VerificationError) as failed:
                promote("tenant-backend", ["staging", "production"])
    finally:
        server.shutdown()
    assert str(failed.value).startswith(
        f"The application on staging is unhealthy after the migration ({url} answered HTTP 500 on each of 2 "
        f"tries; `{smoke}` exited 0); it was not restored, as it may have taken writes since: fix it, or go back "
        "as below. staging is at the state after core.0008_default_task_statuses; the way back: reverse with "
    ), str(failed.value)
    assert Unhealthy.asked == 2
    assert applied(stack, "production") == ["core.0001_initial"]  # the promotion stopped before it
    events = dbpromote_events("staging", since)
    assert "dbpromote.health.failed" in events and events.count("dbpromote.migration.applied") == 7, events


class Trouble:
    """The application in trouble after a release, until stopped: in a loop, two sessions deadlocked on advisory
    locks taken in opposite orders (PostgreSQL cancels one), and a transaction rolled back; each session closes
    after, so its statistics reach pg_stat_database at once."""

    def __init__(self, url: str):
        self.url, self.stop = url, threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def lock_both(self, first: int, second: int, ready: threading.Barrier) -> None:
        with contextlib.suppress(psycopg.errors.DeadlockDetected), psycopg.connect(self.url) as conn:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", [first])
            ready.wait(5)
            conn.execute("SELECT pg_advisory_xact_lock(%s)", [second])

    def run(self) -> None:
        while not self.stop.is_set():
            ready = threading.Barrier(2)
            pair = [threading.Thread(target=self.lock_both, args=order + (ready,)) for order in ((1, 2), (2, 1))]
            for thread in pair:
                thread.start()
            for thread in pair:
                thread.join(10)
            with psycopg.connect(self.url) as conn:
                conn.execute("SELECT 1")
                conn.rollback()

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(15)


def test_the_database_is_watched_after_it_migrates_and_the_report_says_what_it_saw(fresh_databases):
    from dbpromote.flows.environment import migrate_environment

    from dbpromote.reporting.markdown import render_markdown

    stack = fresh_databases
    with target_changed("staging", watch_after_s=4.0), Trouble(stack.database_url("staging")):
        report = migrate_environment("tenant-backend", "staging")
    aftermath = report.aftermath
    assert aftermath.seconds == 4.0 and aftermath.samples >= 4
    assert aftermath.deadlocks >= 1 and aftermath.rollbacks >= aftermath.deadlocks, aftermath
    assert aftermath.most_connections >= 2
    watched = f"4 s watched ({aftermath.samples} samples): {aftermath.deadlocks} deadlock(s)"
    assert f"## After the migration\n\n{watched}" in render_markdown(report)
    unwatched = migrate_environment("tenant-backend", "staging")  # nothing to migrate: nothing to watch
    assert unwatched.aftermath is None


def hold_a_snapshot(url: str, seconds: float) -> threading.Thread:
    """A session with an open REPEATABLE READ transaction (a report, a backup) until an index build has waited
    for it `seconds`: a build concurrently waits for every older snapshot to end."""
    ready = threading.Event()

    def hold():
        with psycopg.connect(url) as conn, psycopg.connect(url, autocommit=True) as watcher:
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            conn.execute("SELECT count(*) FROM core_tenant")
            ready.set()
            waiting = "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'virtualxid' AND NOT granted)"
            deadline = time.monotonic() + 120
            while not watcher.execute(waiting).fetchone()[0] and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(seconds)
            conn.rollback()

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    ready.wait(10)
    return thread


def index_state(url: str, name: str):
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE c.relname = %s", [name]
        ).fetchone()
    return None if row is None else ("valid" if row[0] else "INVALID")


def test_an_index_built_concurrently_waits_for_old_snapshots_and_a_cancelled_build_is_dropped_and_rebuilt(
    fresh_databases,
):
    from dbpromote.flows.environment import migrate_environment

    stack = fresh_databases
    url, index, to = stack.database_url("staging"), "task_tenant_created_idx", "core:0004_task_tenant_created_idx"
    env = os.environ | {"DATABASE_URL": url}
    back = [sys.executable, "manage.py", "migrate", "core", "0003_task_priority", "-v0"]
    subprocess.run(back, cwd=local_stack.SAMPLE_PROJECT, env=env, check=True)

    # The target's lock_timeout is 2 s; the build waits 3 s for the snapshot, within its own timeout (10 min).
    holder = hold_a_snapshot(url, 3)
    (built,) = migrate_environment("tenant-backend", "staging", to).migrations
    holder.join()
    assert (built.label, built.attempts, index_state(url, index)) == ("core.0004_task_tenant_created_idx", 1, "valid")

    # With a 1 s timeout of its own, the build is cancelled half-way: the INVALID index it left is dropped, and the
    # migration runs again once the snapshot is gone.
    subprocess.run(back, cwd=local_stack.SAMPLE_PROJECT, env=env, check=True)
    with target_changed("staging", concurrent_lock_timeout_ms=1000):
        holder = hold_a_snapshot(url, 2)
        (rebuilt,) = migrate_environment("tenant-backend", "staging", to).migrations
    assert (rebuilt.attempts, index_state(url, index)) == (2, "valid")
    assert applied(stack, "staging")[-1] == "core.0004_task_tenant_created_idx"
