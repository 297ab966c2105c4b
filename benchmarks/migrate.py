"""Benchmark: a real project's migrations applied one at a time, as a step applies them, against `manage.py migrate`.

Usage: .venv/bin/python benchmarks/migrate.py [--rounds 3]   (local stack up first)
The project: benchmarks/plan.py's Wagtail site with django-allauth (from the registry: 212 migrations over two dozen
apps, a new environment's whole history). Each round, two empty databases on the staging server: one migrated by
the site's own `manage.py migrate` (one process, one plan, post_migrate once), the other by dbpromote's migrations
as an environment step runs them (one probe, each migration its own request with its lock_timeout, its tables
locked first, its long-transaction check, exclusion lock and watcher; post_migrate once after them), the task alone
(no Prefect run around it). Both must end with the same content types and permissions.
Goal: <= 2.5x `manage.py migrate`: one migration at a time costs a request, a transaction and the checks around
each, but not the project's models rendered again for each.
"""

import argparse
import statistics
import time

import psycopg
from common import stack  # noqa: F401  (points this process at the local stack)
from plan import database, manage, site_project

GOAL = 2.5


def made(url: str) -> tuple[int, int]:
    """The content types and permissions post_migrate made."""
    with psycopg.connect(url) as conn:
        types = conn.execute("SELECT count(*) FROM django_content_type").fetchone()[0]
        return types, conn.execute("SELECT count(*) FROM auth_permission").fetchone()[0]


def ours(project, url: str) -> tuple[float, int]:
    """The seconds to apply every migration of the plan one at a time, as an environment step does; how many."""
    from dbpromote import migrate
    from dbpromote.config import DatabaseTarget
    from dbpromote.planning import compute_plan
    from dbpromote.probe import ProbeSession

    target = DatabaseTarget(url=url).named("bench")
    with ProbeSession(project, target) as probe:
        plan = compute_plan(project, target, "", probe)
        started = time.monotonic()
        for migration in plan.migrations:
            migrate.apply_migration(probe, target, migration)
        migrate.after_migrating(probe, target, plan.migrations)
        return time.monotonic() - started, len(plan.migrations)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    python, project = site_project()
    bare, step = [], []
    for _ in range(args.rounds):  # alternating, so that neither gets a warmer cache
        url = database("bench_migrate_bare", python, None)
        started = time.monotonic()
        manage(python, url, "migrate", "-v0")
        bare.append(time.monotonic() - started)
        expected = made(url)
        url = database("bench_migrate_ours", python, None)
        seconds, count = ours(project, url)
        step.append(seconds)
        assert made(url) == expected, f"post_migrate made {made(url)}, `manage.py migrate` {expected}"
    bare_s, step_s = statistics.median(bare), statistics.median(step)
    ratio = step_s / bare_s
    print(f"{count} migrations: manage.py migrate {bare_s:.1f} s; one at a time, as a step {step_s:.1f} s")
    print(f"content types and permissions as `manage.py migrate` makes them: {expected[0]} and {expected[1]}")
    print(
        f"goal migrate-one-at-a-time: {ratio:.2f}x manage.py migrate (goal <= {GOAL}x): "
        f"{'met' if ratio <= GOAL else 'NOT MET'}"
    )


if __name__ == "__main__":
    main()
