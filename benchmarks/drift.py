"""Benchmark: a drift check against the bare replay it contains, on the sample and on a 1,000-table project.

Usage: .venv/bin/python benchmarks/drift.py [--tables N] [--per-migration N] [--keep]   (local stack up first)
Baseline: `manage.py migrate` of the same migrations into an empty database, as one would replay them by hand.
Ours: the drift task alone (plan probe, scratch database, replay, RLS, both catalogs read and compared, drop; with
nothing kept), the task again on the same history (the replay kept: dbpromote/replays.py), and `dbpromote drift
TARGET --project P` as typed (its deployment run included; the worker's kept replays as they are). Goal: the task
<= 1.5x the replay.
The wide project (N models with a foreign key and an index each, in migrations of --per-migration models) is
written and migrated once into bench_drift_wide; --keep reuses it.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg
from common import stack  # points this process at the local stack

from dbpromote import localstack as local_stack

WIDE = Path(tempfile.gettempdir()) / "dbpromote-bench-wide"
SETTINGS = """
import os
from urllib.parse import urlsplit

url = urlsplit(os.environ["DATABASE_URL"])
SECRET_KEY = "bench"
INSTALLED_APPS = ["wide"]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
DATABASES = {"default": {"ENGINE": "django.db.backends.postgresql", "NAME": url.path.lstrip("/"),
    "USER": url.username, "PASSWORD": url.password, "HOST": url.hostname, "PORT": url.port}}
"""
MANAGE = """import os, sys
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "wide_site.settings")
from django.core.management import execute_from_command_line
execute_from_command_line(sys.argv)
"""


def model(i: int) -> str:
    parent = f"\n    parent = models.ForeignKey('Thing{i - 1:04d}', null=True, on_delete=models.SET_NULL)" if i else ""
    return (
        f"class Thing{i:04d}(models.Model):\n    name = models.CharField(max_length=100)\n"
        f"    created = models.DateTimeField(db_index=True){parent}\n"
    )


def write_wide_project(tables: int, per_migration: int) -> None:
    """The project with its migrations, written by makemigrations as a team's would be."""
    shutil.rmtree(WIDE, ignore_errors=True)
    (WIDE / "wide_site").mkdir(parents=True)
    (WIDE / "wide" / "migrations").mkdir(parents=True)
    (WIDE / "manage.py").write_text(MANAGE)
    (WIDE / "wide_site" / "__init__.py").write_text("")
    (WIDE / "wide_site" / "settings.py").write_text(SETTINGS)
    (WIDE / "wide" / "__init__.py").write_text("")
    (WIDE / "wide" / "migrations" / "__init__.py").write_text("")
    env = os.environ | {"DATABASE_URL": stack.database_url("staging")}
    for upto in range(per_migration, tables + per_migration, per_migration):
        models = "\n\n".join(model(i) for i in range(min(upto, tables)))
        (WIDE / "wide" / "models.py").write_text(f"from django.db import models\n\n\n{models}")
        step = ["makemigrations", "wide", "-n", f"upto_{min(upto, tables)}", "-v0"]
        subprocess.run([sys.executable, "manage.py", *step], cwd=WIDE, env=env, check=True)


def empty_database(name: str) -> str:
    with psycopg.connect(**stack.superuser_conninfo("staging"), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {name} OWNER tenant_owner")
    return stack.database_url("staging").rsplit("/", 1)[0] + f"/{name}"


def migrate(folder: Path, url: str) -> float:
    """`manage.py migrate` into the database at url, timed."""
    env = os.environ | {"DATABASE_URL": url}
    started = time.monotonic()
    subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=folder, env=env, check=True)
    return time.monotonic() - started


def measure(label: str, folder: Path, settings: str, live: str, rounds: int) -> float:
    """Baseline and ours on the database `live` (migrated by the project at folder), best of `rounds`, printed;
    returns the task's ratio to the bare replay."""
    from dbpromote import replays
    from dbpromote.config import DatabaseTarget, DjangoProject
    from dbpromote.drift import check_drift

    bare_s = min(migrate(folder, empty_database("bench_drift_bare")) for _ in range(rounds))
    project, target = DjangoProject(path=str(folder), settings_module=settings), DatabaseTarget(url=live)
    project.save("bench-drift", overwrite=True)
    target.save("bench-drift", overwrite=True)
    timings, report = [], None
    for _ in range(rounds):
        with tempfile.TemporaryDirectory() as kept:  # nothing kept: the replay itself is what is measured
            os.environ[replays.CACHE_ENV] = kept
            started = time.monotonic()
            report = check_drift(project, target)
            timings.append(time.monotonic() - started)
            started = time.monotonic()
            again = check_drift(project, target)  # the same history: its replay kept
            reused_s = time.monotonic() - started
            assert again.reused and again.differences == report.differences, again.text()
        del os.environ[replays.CACHE_ENV]
    assert not report.blocking, report.text()
    typed = [sys.executable.replace("python", "dbpromote"), "drift", "bench-drift", "--project", "bench-drift"]
    started = time.monotonic()
    ran = subprocess.run(typed, capture_output=True, text=True, check=False)
    typed_s = time.monotonic() - started
    assert ran.returncode in (0, 1) and " on bench-drift" in ran.stdout, ran.stderr  # 1: RLS a promotion would apply
    task_s = min(timings)
    print(
        f"{label}: {report.replayed} migrations; bare migrate into an empty database {bare_s:.2f} s; "
        f"drift task {task_s:.2f} s = {task_s / bare_s:.2f}x (goal <= 1.5x), {reused_s:.2f} s on a history "
        f"replayed before; "
        f"`dbpromote drift` as typed {typed_s:.2f} s = {typed_s / bare_s:.2f}x",
        flush=True,
    )
    return task_s / bare_s


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tables", type=int, default=1000)
    parser.add_argument("--per-migration", type=int, default=100)
    parser.add_argument("--keep", action="store_true", help="reuse the wide project and its database")
    args = parser.parse_args()

    sample = empty_database("bench_drift_sample")
    migrate(local_stack.SAMPLE_PROJECT, sample)
    ratios = {
        "sample": measure("sample project", local_stack.SAMPLE_PROJECT, "tenant_backend.settings", sample, rounds=3)
    }

    if not (args.keep and (WIDE / "manage.py").exists()):
        print(f"writing a project of {args.tables} models ...", flush=True)
        write_wide_project(args.tables, args.per_migration)
    wide = empty_database("bench_drift_wide")
    migrate(WIDE, wide)
    # minutes each at 1,000 tables
    ratios[f"{args.tables}-tables"] = measure(f"{args.tables} tables", WIDE, "wide_site.settings", wide, rounds=1)
    for name, ratio in ratios.items():
        print(
            f"goal drift-task-{name}: {ratio:.2f}x a bare replay (goal <= 1.5x): {'met' if ratio <= 1.5 else 'NOT MET'}"
        )


if __name__ == "__main__":
    main()
