"""Benchmark: the sample release promoted over staging and production (approval given at once) against the bare
commands it replaces run by hand on identical databases: pg_dump, migrate, showmigrations per environment.

Usage: .venv/bin/python benchmarks/promotion_overhead.py [--tenants N --rows R --text-bytes B]
(local stack up first; replaces both sample databases). Without sizes: the sample's 3 small tenants, where fixed
costs dominate. With sizes (e.g. --tenants 20 --rows 1000 --text-bytes 3000, ~0.5 GB): a template database is
seeded once per server and both runs start from a copy of it.
Ours is measured twice: the flow called in this process, and as a user runs it (`dbpromote promote --wait`,
then `dbpromote approve` once `pending` lists the run: trigger, worker, flow process, pause and resume included).
Goal: the commands as typed <= 1.5x the bare commands' wall time.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psycopg
from common import add_seed_arguments, deploys_stopped, local_stack, stack  # points this process at the local stack
from psycopg import sql

TEMPLATE = "tenant_backend_bench"


def seed_templates(tenants: int, rows: int, text_bytes: int) -> None:
    for server in local_stack.SERVERS:
        local_stack.reset_database(stack, server, tenants=0)
        env = os.environ | {"DATABASE_URL": stack.database_url(server)}
        subprocess.run(
            [
                sys.executable,
                "manage.py",
                "seed_tenants",
                "--tenants",
                str(tenants),
                "--rows",
                str(rows),
                "--text-bytes",
                str(text_bytes),
            ],
            cwd=local_stack.SAMPLE_PROJECT,
            env=env,
            check=True,
        )
        with psycopg.connect(**stack.superuser_conninfo(server), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(TEMPLATE)))
            conn.execute(
                sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                    sql.Identifier(local_stack.DATABASE), sql.Identifier(TEMPLATE)
                )
            )


def from_template() -> None:
    for server in local_stack.SERVERS:
        with psycopg.connect(**stack.superuser_conninfo(server), autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(local_stack.DATABASE))
            )
            conn.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE {} OWNER {}").format(
                    sql.Identifier(local_stack.DATABASE),
                    sql.Identifier(TEMPLATE),
                    sql.Identifier(local_stack.MIGRATION_ROLE),
                )
            )


def bare() -> float:
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as folder:
        for server in local_stack.SERVERS:
            url = stack.database_url(server)
            subprocess.run(["pg_dump", "-Fc", "-f", f"{folder}/{server}.dump", url], check=True)
            env = os.environ | {"DATABASE_URL": url}
            for command in (["migrate"], ["showmigrations", "core"]):
                subprocess.run(
                    [sys.executable, "manage.py", *command],
                    cwd=local_stack.SAMPLE_PROJECT,
                    env=env,
                    check=True,
                    stdout=subprocess.DEVNULL,
                )
    return time.monotonic() - started


def ours() -> float:
    from dbpromote.flows.promote import promote

    from dbpromote.runs import answer_approval, pending_approvals

    already_paused = {run.id for run in pending_approvals()}

    def approve_when_paused():
        while True:
            runs = [run for run in pending_approvals() if run.id not in already_paused]
            if runs:
                answer_approval(str(runs[-1].id), "approve", "benchmark", "", acknowledge_risks=True)
                return
            time.sleep(0.2)

    approver = threading.Thread(target=approve_when_paused, daemon=True)
    approver.start()
    started = time.monotonic()
    promote("tenant-backend", ["staging", "production"], approval_poll_s=1)
    return time.monotonic() - started


def ours_typed() -> float:
    """The same promotion as a user runs it: `dbpromote promote ... --wait` in one terminal and, once `pending`
    lists it, `dbpromote approve` in another; the wall time of the first."""
    dbpromote = str(Path(sys.executable).parent / "dbpromote")
    started = time.monotonic()
    promotion = subprocess.Popen(
        [dbpromote, "promote", "--project", "tenant-backend", "--through", "staging,production", "--wait"],
        stdout=subprocess.PIPE,
        text=True,
    )
    run_id = promotion.stdout.readline().split()[0]
    while run_id not in subprocess.run([dbpromote, "pending"], capture_output=True, text=True).stdout:
        time.sleep(0.5)
    approve = [dbpromote, "approve", run_id, "--approver", "benchmark", "--acknowledge-risks"]
    subprocess.run(approve, check=True, capture_output=True)
    assert promotion.wait() == 0, "the promotion failed"
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    add_seed_arguments(parser, 0, 20, 200, "reuse the seeded template databases")
    parser.add_argument("--rounds", type=int, default=3, help="bare and ours alternate; medians are compared")
    args = parser.parse_args()

    def fresh() -> None:
        if args.tenants:
            from_template()
        else:
            for server in local_stack.SERVERS:
                local_stack.reset_database(stack, server)

    if args.tenants and not args.keep:
        seed_templates(args.tenants, args.rows, args.text_bytes)
    fresh()
    with psycopg.connect(stack.database_url("staging")) as conn:
        size = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
    bares, ourses, typeds = [], [], []
    for _ in range(args.rounds):
        fresh()
        bares.append(bare())
        fresh()
        ourses.append(ours())
        fresh()
        typeds.append(ours_typed())
        print(f"round: bare {bares[-1]:.1f} s, flow {ourses[-1]:.1f} s, typed {typeds[-1]:.1f} s", flush=True)
    bare_s, ours_s, typed_s = statistics.median(bares), statistics.median(ourses), statistics.median(typeds)
    print(f"database size {size / 1e9:.2f} GB per environment; medians of {args.rounds} rounds")
    print(f"bare pg_dump + migrate + showmigrations x2         {bare_s:6.1f} s  (baseline)")
    print(f"the promote flow in this process (approved at once) {ours_s:6.1f} s  {ours_s / bare_s:5.2f}x baseline")
    print(
        f"dbpromote promote --wait + approve, as typed        {typed_s:6.1f} s  {typed_s / bare_s:5.2f}x baseline "
        "(goal <= 1.5)"
    )


if __name__ == "__main__":
    with deploys_stopped():
        main()
