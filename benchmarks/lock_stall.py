"""Benchmark: how long the application stalls while a migration waits for a lock another session holds.

Usage: .venv/bin/python benchmarks/lock_stall.py [--rows N]   (local stack up first)
Load: 4 clients doing autocommit SELECT / UPDATE by id on core_task; a blocker holds ACCESS SHARE on core_task for
20 s from t=5 s; the release's 0003 (ADD COLUMN ... NOT NULL DEFAULT 0 on core_task) starts at t=7 s.
Baseline: bare `manage.py migrate core 0003_task_priority` (no lock_timeout), in the same run.
Goals for our migrate step: worst app statement <= 1.2x lock_timeout, total stall <= 25% of the blocker's 20 s
window, and completion within one backoff step after the blocker ends (steps start at 3x lock_timeout and double
up to max(4 s, 6x lock_timeout), +-25% jitter).
"""

import argparse
import os
import random
import subprocess
import sys
import threading
import time

import psycopg
from common import local_stack, stack  # points this process at the local stack

DB = "bench_lock_stall"
BLOCK_AT, BLOCK_FOR, MIGRATE_AT = 5.0, 20.0, 7.0
SLOW_S = 0.1


def prepare(url: str, rows: int) -> None:
    with psycopg.connect(**stack.superuser_conninfo("staging"), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {DB} OWNER tenant_owner")
    manage(url, "migrate", "core", "0002_featureflag")
    manage(url, "seed_tenants", "--tenants", "2", "--rows", "20")
    with psycopg.connect(url) as conn:
        conn.execute(
            """INSERT INTO core_task (tenant_id, project_id, status_id, milestone_id, title, body, created_at)
                        SELECT tenant_id, project_id, status_id, milestone_id, title || g, body, now()
                        FROM core_task, generate_series(1, %s) g""",
            [rows // 40],
        )
        conn.execute("ANALYZE core_task")


def manage(url: str, *args: str) -> None:
    subprocess.run(
        [sys.executable, "manage.py", *args, "-v0"] if args[0] == "migrate" else [sys.executable, "manage.py", *args],
        cwd=local_stack.SAMPLE_PROJECT,
        check=True,
        env=os.environ | {"DATABASE_URL": url},
        stdout=subprocess.DEVNULL,
    )


def run_scenario(url: str, migrate) -> dict:
    """Clients, blocker and migration on one clock; returns worst statement, stalled union and completion."""
    with psycopg.connect(url) as conn:
        max_id = conn.execute("SELECT max(id) FROM core_task").fetchone()[0]
    stop = threading.Event()
    samples: list[tuple[float, float]] = []
    t0 = time.monotonic()

    def client(seed: int) -> None:
        rng = random.Random(seed)
        with psycopg.connect(url, autocommit=True) as conn:
            while not stop.is_set():
                started = time.monotonic()
                task_id = rng.randint(1, max_id)
                if rng.random() < 0.5:
                    conn.execute("SELECT title FROM core_task WHERE id = %s", [task_id]).fetchall()
                else:
                    conn.execute("UPDATE core_task SET body = body WHERE id = %s", [task_id])
                samples.append((started - t0, time.monotonic() - t0))
                time.sleep(0.005)

    def blocker() -> None:
        time.sleep(BLOCK_AT)
        with psycopg.connect(url) as conn:
            conn.execute("SELECT 1 FROM core_task LIMIT 1")  # ACCESS SHARE held until commit
            time.sleep(BLOCK_FOR)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(4)] + [threading.Thread(target=blocker)]
    for thread in threads:
        thread.start()
    time.sleep(MIGRATE_AT)
    migrate()
    done_at = time.monotonic() - t0
    time.sleep(1)
    stop.set()
    for thread in threads:
        thread.join()
    slow = sorted((s, e) for s, e in samples if e - s > SLOW_S)
    stalled, current = 0.0, None
    for start, end in slow:
        if current and start <= current[1]:
            current[1] = max(current[1], end)
        else:
            stalled += current[1] - current[0] if current else 0
            current = [start, end]
    stalled += current[1] - current[0] if current else 0
    return {
        "worst": max(e - s for s, e in samples),
        "stalled": stalled,
        "after_blocker": done_at - (BLOCK_AT + BLOCK_FOR),
        "statements": len(samples),
    }


def migrate_in_flow(project, target, migration) -> None:
    from dbpromote.tasks.migrate import apply_migration
    from prefect import flow

    from dbpromote.probe import ProbeSession

    def migrate_step():
        with ProbeSession(project, target) as probe:
            return apply_migration(probe, target, migration)

    flow(name="lock-stall-benchmark")(migrate_step)()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=200_000)
    args = parser.parse_args()
    from dbpromote.config import DatabaseTarget, DjangoProject
    from dbpromote.planning import compute_plan

    url = stack.database_url("staging").rsplit("/", 1)[0] + f"/{DB}"
    project = DjangoProject(
        path=str(local_stack.SAMPLE_PROJECT), settings_module="tenant_backend.settings", python=sys.executable
    )
    results = {}
    prepare(url, args.rows)
    results["bare manage.py migrate"] = run_scenario(url, lambda: manage(url, "migrate", "core", "0003_task_priority"))
    for lock_timeout_ms in (2000, 500):
        manage(url, "migrate", "core", "0002_featureflag")
        target = DatabaseTarget(url=url, lock_timeout_ms=lock_timeout_ms, max_lock_wait_s=120).named("bench")
        migration = compute_plan(project, target, "core:0003_task_priority").migrations[0]

        results[f"dbpromote, lock_timeout {lock_timeout_ms} ms"] = run_scenario(
            url, lambda target=target, migration=migration: migrate_in_flow(project, target, migration)
        )
    base = results["bare manage.py migrate"]
    print(f"blocker holds ACCESS SHARE for {BLOCK_FOR:.0f} s; {args.rows} rows in core_task")
    print(f"{'scenario':<36}{'worst stmt':>12}{'stalled':>10}{'done after blocker':>20}")
    for name, r in results.items():
        print(
            f"{name:<36}{r['worst']:>10.2f} s{r['stalled']:>8.1f} s{r['after_blocker']:>18.1f} s   "
            f"worst {r['worst'] / base['worst']:.2f}x, stalled {r['stalled'] / base['stalled']:.2f}x baseline; "
            f"stall {100 * r['stalled'] / BLOCK_FOR:.0f}% of the window"
        )
    for lock_timeout_ms in (2000, 500):
        r, timeout_s = results[f"dbpromote, lock_timeout {lock_timeout_ms} ms"], lock_timeout_ms / 1000
        longest_step = 1.25 * max(4.0, 6 * timeout_s)  # the backoff's longest step, with its jitter
        goal(f"worst statement, lock_timeout {lock_timeout_ms} ms", r["worst"] / timeout_s, "x lock_timeout", 1.2)
        goal(f"stall, lock_timeout {lock_timeout_ms} ms", 100 * r["stalled"] / BLOCK_FOR, "% of the window", 25)
        goal(f"done after the blocker, lock_timeout {lock_timeout_ms} ms", r["after_blocker"], " s", longest_step)


def goal(name: str, figure: float, unit: str, bound: float) -> None:
    """One goal line: the figure, its bound, met or not."""
    verdict = "met" if figure <= bound else "NOT MET"
    print(f"goal {name}: {figure:.2f}{unit} (goal <= {bound:g}{unit}): {verdict}")


if __name__ == "__main__":
    main()
