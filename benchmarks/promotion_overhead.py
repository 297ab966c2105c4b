"""Benchmark: the sample release promoted over staging and production (approval given at once) against the bare
commands it replaces run by hand on identical databases: pg_dump, migrate, showmigrations per environment.

Usage: .venv/bin/python benchmarks/promotion_overhead.py [--tenants N --rows R --text-bytes B]
(local stack up first; replaces both sample databases). Without sizes: the sample's 3 small tenants, where fixed
costs dominate. With sizes (e.g. --tenants 20 --rows 1000 --text-bytes 3000, ~0.5 GB): a template database is
seeded once per server and both runs start from a copy of it.
Ours is measured twice: the flow called in this process, and as a user runs it (`dbpromote promote --wait`,
then `dbpromote approve` the moment the run asks: trigger, worker, flow process, pause and resume included).
Goals (issue 34): the commands as typed <= 3x the bare commands' wall time at the sample's size, <= 1.5x at the
seeded size (~0.27 GB per environment); the last typed run's time is broken down from the server's record of it.
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


def ours_typed() -> tuple[float, str, float, float]:
    """The same promotion as a user runs it: `dbpromote promote ... --wait` in one terminal and, the moment it asks
    for approval, `dbpromote approve` in another; the wall time of the first, the run's id, and the wall clock at the
    command's start and end (for breakdown())."""
    from dbpromote.runs import paused_for

    dbpromote = str(Path(sys.executable).parent / "dbpromote")
    started, typed_at = time.monotonic(), time.time()
    promotion = subprocess.Popen(
        [dbpromote, "promote", "--project", "tenant-backend", "--through", "staging,production", "--wait"],
        stdout=subprocess.PIPE,
        text=True,
    )
    run_id = promotion.stdout.readline().split()[0]
    paused_for(run_id, "approval")  # the person told the moment it asks (polling `pending` added ~2 s of their own)
    approve = [dbpromote, "approve", run_id, "--approver", "benchmark", "--acknowledge-risks"]
    subprocess.run(approve, check=True, capture_output=True)
    assert promotion.wait() == 0, "the promotion failed"
    return time.monotonic() - started, run_id, typed_at, time.time()


def breakdown(run_id: str, typed_at: float, returned_at: float) -> list[str]:
    """Where a typed promotion's wall time went, from the server's record of the run: the command's start to the
    run's creation, creation to Running (worker pickup, a new process, imports), the time paused for the approval
    (asked, answered by `approve`, resumed), each task by name (count and seconds, summed), what the flow did
    between its tasks, and its end to the command's return."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, FlowRunFilterParentFlowRunId

    with get_client(sync_client=True) as client:
        run = client.read_flow_run(run_id)
        children = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[run.id]))
        )
        runs = FlowRunFilter(id=FlowRunFilterId(any_=[run.id, *(child.id for child in children)]))
        tasks = client.read_task_runs(flow_run_filter=runs, limit=200)
        states = sorted(client.read_flow_run_states(run_id), key=lambda state: state.timestamp)
    at = {state.type.value: state.timestamp.timestamp() for state in reversed(states)}  # each type's first time
    ended = states[-1].timestamp.timestamp()
    spans = [
        (state, (later.timestamp - state.timestamp).total_seconds())
        for state, later in zip(states, states[1:], strict=False)
    ]
    paused = sum(seconds for state, seconds in spans if state.type.value == "PAUSED")
    # A suspended run resumes as a new flow run process: scheduled again, picked up, imports again.
    restarted = sum(
        seconds
        for state, seconds in spans
        if state.type.value in ("SCHEDULED", "PENDING") and state.timestamp.timestamp() > at["RUNNING"]
    )
    by_name: dict[str, list[float]] = {}
    subflows = {child.parent_task_run_id for child in children}  # a subflow's stand-in in its parent: its tasks count
    for task in tasks:
        if task.start_time and task.end_time and task.id not in subflows:
            name = task.name.rsplit("-", 1)[0].split(" ")[0]  # "apply-migration-3" and "migrate core.0002" alike
            by_name.setdefault(name, []).append((task.end_time - task.start_time).total_seconds())
    busy = sum(sum(durations) for durations in by_name.values())
    running = ended - at["RUNNING"] - paused - restarted
    lines = [
        f"  command start to run created       {run.created.timestamp() - typed_at:6.2f} s",
        f"  created to running (worker, process start, imports) {at['RUNNING'] - run.created.timestamp():6.2f} s",
        f"  paused for the approval (ask, `approve`, resume)  {paused:6.2f} s",
        f"  resumed: scheduled again to running (worker, a new process, imports) {restarted:6.2f} s",
        f"  running, not paused                {running:6.2f} s, in tasks {busy:.2f} s (summed; some overlap):",
    ]
    for name, durations in sorted(by_name.items(), key=lambda item: -sum(item[1])):
        lines.append(f"    {name:32} x{len(durations):<3} {sum(durations):6.2f} s")
    between = max(running - busy, 0)
    lines.append(f"    between tasks (the flows' own work: loading blocks, records, subflows' ends) {between:6.2f} s")
    lines.append(f"  run ended to the command's return  {returned_at - ended:6.2f} s")
    return lines


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
        typed_s, run_id, typed_at, returned_at = ours_typed()
        typeds.append(typed_s)
        print(f"round: bare {bares[-1]:.1f} s, flow {ourses[-1]:.1f} s, typed {typeds[-1]:.1f} s", flush=True)
    bare_s, ours_s, typed_s = statistics.median(bares), statistics.median(ourses), statistics.median(typeds)
    print(f"database size {size / 1e9:.2f} GB per environment; medians of {args.rounds} rounds")
    print(f"bare pg_dump + migrate + showmigrations x2         {bare_s:6.1f} s  (baseline)")
    print(f"the promote flow in this process (approved at once) {ours_s:6.1f} s  {ours_s / bare_s:5.2f}x baseline")
    print(f"dbpromote promote --wait + approve, as typed        {typed_s:6.1f} s  {typed_s / bare_s:5.2f}x baseline")
    print("where the last typed promotion's time went:")
    print("\n".join(breakdown(run_id, typed_at, returned_at)))
    # Issue 34's goals: fixed costs dominate at the sample's size; at the seeded size the work itself should.
    bound = 1.5 if size >= SEEDED_BYTES else 3.0
    ratio = typed_s / bare_s
    verdict = "met" if ratio <= bound else "NOT MET"
    print(f"goal typed-promotion: {ratio:.2f}x the checklist (goal <= {bound}x): {verdict}")


# promotion_overhead's seeded size (--tenants 20 --rows 1000 --text-bytes 3000), ~0.27 GB per environment: from
# here on the stricter goal applies.
SEEDED_BYTES = 0.25e9


if __name__ == "__main__":
    with deploys_stopped():
        main()
