"""Benchmark: what the application waits while a release rewrites its busiest table.

A table of --rows accounts (4M by default) on the stack's staging server, four clients of the application's role
reading and updating random rows in a loop, and a release that adds an index without CONCURRENTLY and a column with
a volatile default (a rewrite under ACCESS EXCLUSIVE). Measured in one run, the application's longest wait and its
p99 request latency:
- bare `manage.py migrate` (the baseline: the application waits as long as the migration runs);
- dbpromote's step with max_app_wait_s 2: the watcher cancels the migration (rolled back whole) once a client has
  waited 2 s;
- dbpromote's promotion with a maintenance window that opens a minute or so later: the load runs until it opens
  (the day) and stops then (the night: simulated as no load at all); the lint marks the release a table rewrite, so
  the step waits for the window and the application meets no migration at all;
- dbpromote's step with the watcher sampling but never cancelling (max_app_wait_s 0): its own cost, the time its
  samples took against the migration's.
Goals: the longest wait <= max_app_wait + 0.5 s; the watcher's own cost <= 2 % of the migration's time.

Needs the local stack (`dbpromote stack up`).
"""

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psycopg
from common import deploys_stopped, local_stack, stack  # points this process at the local stack

LIMIT_S = 2.0
MODELS = """
from django.db import models


class Account(models.Model):
    balance = models.IntegerField(default=0, db_index=True)
    note = models.TextField(default="")
    stamp = models.DateTimeField(null=True)

    class Meta:
        app_label = "bank"
"""
INITIAL = """
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = []
    operations = [
        migrations.CreateModel("Account", [
            ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
            ("balance", models.IntegerField(default=0)),
            ("note", models.TextField(default="")),
        ]),
    ]
"""
RELEASE = """
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("bank", "0001_initial")]
    operations = [
        migrations.AlterField("account", "balance", models.IntegerField(default=0, db_index=True)),
        migrations.SeparateDatabaseAndState(
            database_operations=[migrations.RunSQL(
                "ALTER TABLE bank_account ADD COLUMN stamp timestamptz DEFAULT clock_timestamp()",
                "ALTER TABLE bank_account DROP COLUMN stamp",
            )],
            state_operations=[migrations.AddField("account", "stamp", models.DateTimeField(null=True))],
        ),
    ]
"""


class Load:
    """Clients of the application's role reading and updating random accounts; every request's latency."""

    def __init__(self, url: str, rows: int, clients: int = 4):
        self.url, self.rows, self.latencies, self.stop = url, rows, [], threading.Event()
        self.threads = [threading.Thread(target=self.client, args=(n,), daemon=True) for n in range(clients)]

    def client(self, number: int) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            step = 0
            while not self.stop.is_set():
                step += 1
                account = (number * 7919 + step * 104729) % self.rows + 1
                started = time.monotonic()
                if step % 2:
                    conn.execute("SELECT balance FROM bank_account WHERE id = %s", [account])
                else:
                    conn.execute("UPDATE bank_account SET balance = balance + 1 WHERE id = %s", [account])
                self.latencies.append(time.monotonic() - started)

    def __enter__(self):
        for thread in self.threads:
            thread.start()
        time.sleep(1)  # a steady load before the migration
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for thread in self.threads:
            thread.join(30)

    def figures(self) -> tuple[float, float]:
        ordered = sorted(self.latencies)
        return ordered[-1], ordered[int(0.99 * (len(ordered) - 1))]


def project(rows: int) -> Path:
    """The sample project with a `bank` app of one table of `rows` accounts on staging, at 0001."""
    folder = Path(tempfile.mkdtemp()) / "project"
    subprocess.run(["cp", "-r", str(local_stack.SAMPLE_PROJECT), str(folder)], check=True)
    app = folder / "bank"
    (app / "migrations").mkdir(parents=True)
    (app / "__init__.py").write_text("")
    (app / "models.py").write_text(MODELS)
    (app / "migrations" / "__init__.py").write_text("")
    (app / "migrations" / "0001_initial.py").write_text(INITIAL)
    (app / "migrations" / "0002_release.py").write_text(RELEASE)
    settings = folder / "tenant_backend" / "settings.py"
    settings.write_text(settings.read_text() + '\nINSTALLED_APPS = [*INSTALLED_APPS, "bank"]\n')
    manage(folder, "migrate", "bank", "zero")
    manage(folder, "migrate")
    manage(folder, "migrate", "bank", "0001")
    with psycopg.connect(stack.database_url("staging"), autocommit=True) as conn:
        conn.execute("TRUNCATE bank_account")
        conn.execute(
            "INSERT INTO bank_account (balance, note) SELECT g %% 1000, repeat('account note ', 4) "
            "FROM generate_series(1, %s) g",
            [rows],
        )
        conn.execute("VACUUM ANALYZE bank_account")
        conn.execute(f"GRANT SELECT, UPDATE ON bank_account TO {local_stack.APP_ROLE}")
    return folder


def manage(folder: Path, *args: str) -> float:
    env = {"DATABASE_URL": stack.database_url("staging"), "PATH": "/usr/bin:/bin"}
    started = time.monotonic()
    subprocess.run([sys.executable, "manage.py", *args, "-v0"], cwd=folder, env=env, check=True)
    return time.monotonic() - started


def ours(folder: Path, limit_s: float) -> tuple[str, float, int, float]:
    """dbpromote's step on staging with max_app_wait_s `limit_s`: how it ended, its seconds (the migration's own,
    when it was applied), the watcher's samples and their seconds."""
    from dbpromote.flows.environment import migrate_environment

    from dbpromote import watch
    from dbpromote.config import DatabaseTarget, DjangoProject
    from dbpromote.errors import MigrationError

    DjangoProject(path=str(folder), settings_module="tenant_backend.settings", python=sys.executable).save(
        "impact-bench", overwrite=True
    )
    saved = DatabaseTarget.load("staging")
    saved.model_copy(update={"max_app_wait_s": limit_s, "health_url": "", "smoke_command": ""}).save(
        "staging", overwrite=True
    )
    sampled = []
    original = watch.Watcher.sample

    def timed(self):
        started = time.monotonic()
        original(self)
        sampled.append(time.monotonic() - started)

    watch.Watcher.sample = timed  # the watcher's own time, counted where it is spent
    started = time.monotonic()
    try:
        (migrated,) = migrate_environment("impact-bench", "staging").migrations
        ended, seconds = "applied", migrated.duration_s
    except MigrationError as error:
        ended, seconds = str(error).split(";")[0], time.monotonic() - started
    finally:
        watch.Watcher.sample = original
        saved.save("staging", overwrite=True)
    return ended, seconds, len(sampled), sum(sampled)


def in_a_window(app_url: str, rows: int) -> tuple[float, float, float, str]:
    """dbpromote's promotion of staging with a window opening at the first whole minute 45 s away or more, the load
    running until then: the load's longest request and p99, the seconds from the promotion's start to its end, and
    how it ended."""
    from datetime import UTC, datetime, timedelta

    from dbpromote.flows.promote import promote

    from dbpromote.config import DatabaseTarget

    opens = (datetime.now(UTC) + timedelta(seconds=45 + 59)).replace(second=0, microsecond=0)
    window = f"* {opens:%H:%M}-{opens + timedelta(minutes=30):%H:%M} UTC"
    saved = DatabaseTarget.load("staging")
    update = {"windows": [window], "window_lock_s": 0, "health_url": "", "smoke_command": ""}
    saved.model_copy(update=update).save("staging", overwrite=True)
    started = time.monotonic()
    try:
        with Load(app_url, rows) as load:
            night = threading.Timer((opens - datetime.now(UTC)).total_seconds(), load.stop.set)
            night.start()
            (report,) = promote("impact-bench", ["staging"])
            night.cancel()
    finally:
        saved.save("staging", overwrite=True)
    (migrated,) = report.migrations
    ended = f"applied in the window {window} ({migrated.duration_s:.1f} s, the load stopped at {opens:%H:%M})"
    return *load.figures(), time.monotonic() - started, ended


def main() -> None:
    parser = argparse.ArgumentParser()
    # 1M rows rewrote in 1.9 s on an idle machine, under the 2 s limit: 4M make the migration outlast it.
    parser.add_argument("--rows", type=int, default=4_000_000)
    args = parser.parse_args()
    local_stack.reset()
    folder = project(args.rows)
    app_url = stack.database_url("staging", local_stack.APP_ROLE)
    figures = {}

    with Load(app_url, args.rows) as load:
        ended, seconds, _, _ = ours(folder, LIMIT_S)
    figures["dbpromote, max_app_wait 2 s"] = (*load.figures(), seconds, ended)
    if ended == "applied":  # it finished within the limit: back to 0001 for the baseline
        manage(folder, "migrate", "bank", "0001")
    with Load(app_url, args.rows) as load:
        seconds = manage(folder, "migrate", "bank", "0002")
    figures["bare manage.py migrate"] = (*load.figures(), seconds, "applied")
    manage(folder, "migrate", "bank", "0001")
    with deploys_stopped():  # one phase, and no minutes of watching after
        figures["dbpromote, in a window"] = in_a_window(app_url, args.rows)
    manage(folder, "migrate", "bank", "0001")
    ended, seconds, samples, sampling_s = ours(folder, 0)  # no load: the rewrite runs whole, watched
    print(
        f"the migration watched without a load: {ended} in {seconds:.1f} s, {samples} samples took {sampling_s:.3f} s"
    )
    for name, (longest, p99, took, how) in figures.items():
        print(f"{name:30} longest request {longest:6.2f} s, p99 {p99 * 1000:7.1f} ms; step {took:5.1f} s: {how}")

    longest = figures["dbpromote, max_app_wait 2 s"][0]
    cost = sampling_s / seconds
    bare = figures["bare manage.py migrate"][0]
    print(f"goal longest-app-wait: {longest:.2f} s, {longest / bare:.2f}x bare's {bare:.2f} s "
          f"(goal <= {LIMIT_S + 0.5:g} s): {'met' if longest <= LIMIT_S + 0.5 else 'NOT MET'}")  # fmt: skip
    print(f"goal watcher-cost: {cost:.2%} of the migration's time (goal <= 2%): {'met' if cost <= 0.02 else 'NOT MET'}")
    print(json.dumps({name: value[:3] for name, value in figures.items()}))


if __name__ == "__main__":
    main()
