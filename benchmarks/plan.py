"""Benchmark: planning a project with a long migration history, against `manage.py showmigrations --plan`.

Usage: .venv/bin/python benchmarks/plan.py [--rounds 3]   (local stack up first)
The project: a Wagtail site with django-allauth (from the registry: 200+ migrations over two dozen apps), its
venv built once like the compatibility suite's. Three databases on the staging server: every migration pending
(a new environment), the newest 20 pending (an upgrade: their rows removed from django_migrations, which is all
planning reads), and up to date (the hourly audit). Measured as the user experiences it: the
plan task as a promotion runs it (the probe in the project's interpreter: Django set up, the graph, the
autodetector as makemigrations runs it, the SQL of every pending migration) against the bare command.
Goal: <= 2x `showmigrations --plan` on the same database.
"""

import argparse
import os
import statistics
import subprocess
import time
from pathlib import Path

import psycopg
from common import stack  # points this process at the local stack (and puts the repository on sys.path)

from compat.codebases import SITES, venv_python

REQUIREMENTS = ["wagtail==8.0.1", "django-allauth[mfa,socialaccount]==65.21.1", "dj-database-url==3.1.2"]
UPGRADE_PENDING = 20
SITE = SITES / "wagtail_site"


def database(name: str, python: Path, pending: int | None) -> str:
    """A database with `pending` migrations left to apply (None: all of them)."""
    with psycopg.connect(**stack.superuser_conninfo("staging"), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {name} OWNER tenant_owner")
    url = stack.database_url("staging").rsplit("/", 1)[0] + f"/{name}"
    if pending is not None:
        manage(python, url, "migrate", "-v0")
        with psycopg.connect(url) as conn:
            conn.execute(
                "DELETE FROM django_migrations WHERE id IN "
                "(SELECT id FROM django_migrations ORDER BY id DESC LIMIT %s)",
                [pending],
            )
    return url


def manage(python: Path, url: str, *args: str) -> str:
    env = os.environ | {"DATABASE_URL": url}
    return subprocess.run(
        [str(python), "manage.py", *args], cwd=SITE, env=env, check=True, capture_output=True, text=True
    ).stdout


def site_project():
    """The site's interpreter (its venv built once, as the compatibility suite's) and the project it is to dbpromote."""
    from dbpromote.config import DjangoProject

    python = venv_python(REQUIREMENTS)
    return python, DjangoProject(path=str(SITE), settings_module="settings", python=str(python))


def timed(work) -> float:
    started = time.monotonic()
    work()
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    from dbpromote.config import DatabaseTarget
    from dbpromote.planning import compute_plan

    python, project = site_project()
    scenarios = (("every migration pending", None), ("an upgrade", UPGRADE_PENDING), ("up to date", 0))
    for label, pending in scenarios:
        url = database("bench_plan", python, pending)
        target = DatabaseTarget(url=url).named("bench")
        planned = len(compute_plan(project, target).migrations)
        listed = manage(python, url, "showmigrations", "--plan").count("\n")
        bare, ours = [], []
        for _ in range(args.rounds):  # alternating, so that neither gets a warmer cache
            bare.append(timed(lambda url=url: manage(python, url, "showmigrations", "--plan")))
            ours.append(timed(lambda target=target: compute_plan(project, target)))
        bare_s, ours_s = statistics.median(bare), statistics.median(ours)
        print(
            f"{label}: {listed} migrations in the history, {planned} pending; showmigrations --plan {bare_s:.2f} s, "
            f"dbpromote plan {ours_s:.2f} s = {ours_s / bare_s:.2f}x (goal <= 2x)"
        )


if __name__ == "__main__":
    main()
