"""Benchmark: planning a project with a long migration history, against `manage.py showmigrations --plan`.

Usage: .venv/bin/python benchmarks/plan.py [--rounds 3]   (local stack up first)
The project: a Wagtail site (wagtail 8.0.1 from the registry, 200+ migrations over two dozen apps), its venv
built once like the compatibility suite's. Two databases on the staging server: one with every migration
pending (a new environment), one fully migrated (a routine check). Measured as the user experiences it: the
plan task as a promotion runs it (the probe in the project's interpreter: Django set up, the graph, the
autodetector as makemigrations runs it, the SQL of every pending migration) against the bare command.
Goal: <= 2x `showmigrations --plan` on the same database.
"""

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psycopg
from common import stack  # points this process at the local stack

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.compat.codebases import SITES, venv_python  # noqa: E402

REQUIREMENTS = ["wagtail==8.0.1", "dj-database-url==3.1.2"]
SITE = SITES / "wagtail_site"


def database(name: str, python: Path, migrated: bool) -> str:
    with psycopg.connect(**stack.superuser_conninfo("staging"), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {name} OWNER tenant_owner")
    url = stack.database_url("staging").rsplit("/", 1)[0] + f"/{name}"
    if migrated:
        manage(python, url, "migrate", "-v0")
    return url


def manage(python: Path, url: str, *args: str) -> str:
    env = os.environ | {"DATABASE_URL": url}
    return subprocess.run(
        [str(python), "manage.py", *args], cwd=SITE, env=env, check=True, capture_output=True, text=True
    ).stdout


def timed(work) -> float:
    started = time.monotonic()
    work()
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    from dbpromote.tasks.plan import compute_plan

    from dbpromote.config import DatabaseTarget, DjangoProject

    python = venv_python(REQUIREMENTS)
    project = DjangoProject(path=str(SITE), settings_module="settings", python=str(python))
    for label, migrated in (("every migration pending", False), ("up to date", True)):
        url = database("bench_plan", python, migrated)
        target = DatabaseTarget(url=url)
        pending = len(compute_plan(project, target, "bench").migrations)
        listed = manage(python, url, "showmigrations", "--plan").count("\n")
        bare, ours = [], []
        for _ in range(args.rounds):  # alternating, so that neither gets a warmer cache
            bare.append(timed(lambda url=url: manage(python, url, "showmigrations", "--plan")))
            ours.append(timed(lambda target=target: compute_plan(project, target, "bench")))
        bare_s, ours_s = statistics.median(bare), statistics.median(ours)
        print(
            f"{label}: {listed} migrations in the history, {pending} pending; showmigrations --plan {bare_s:.2f} s, "
            f"dbpromote plan {ours_s:.2f} s = {ours_s / bare_s:.2f}x (goal <= 2x)"
        )


if __name__ == "__main__":
    main()
