"""Issue 33.1-2 on real servers: under a real application load (sessions of the application's role), a migration
that holds its table's lock while the application queues behind it is cancelled once a session has waited past
the target's max_app_wait_s, rolled back whole, and the step fails with one sentence; without the load it runs, and
its record says which lock it held and what the application waited."""

import os
import subprocess
import sys
import threading
import time

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


def test_a_migration_the_application_waits_behind_past_the_limit_is_cancelled_and_rolled_back(
    fresh_databases, project_copy
):
    from dbpromote.flows.environment import migrate_environment

    from dbpromote.errors import MigrationError

    stack = fresh_databases
    (project_copy.folder / "core" / "migrations" / "0009_slow_rewrite.py").write_text(SLOW)
    project = project_copy("slow-rewrite")
    env = os.environ | {"DATABASE_URL": stack.database_url("staging")}
    migrate = [sys.executable, "manage.py", "migrate", "core", "0008_default_task_statuses", "-v0"]
    subprocess.run(migrate, cwd=project_copy.folder, env=env, check=True)
    with psycopg.connect(stack.database_url("staging"), autocommit=True) as conn:
        conn.execute("GRANT SELECT ON core_task TO django_app")  # what the RLS step grants on a promotion

    app_url = stack.database_url("staging", local_stack.APP_ROLE)
    with target_changed("staging", max_app_wait_s=1.0), ApplicationLoad(app_url) as load:
        with pytest.raises(MigrationError) as failed:
            migrate_environment(project, "staging")
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
    assert applied(stack, "staging")[-1] == "core.0009_slow_rewrite"
