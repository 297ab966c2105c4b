"""Benchmark: a fleet of small databases on the production server, all at v1, taken to the release.

Usage: .venv/bin/python benchmarks/fleet.py [--sizes 10,50,100] [--parallel 4]
(local stack up first, ideally `dbpromote stack up --workers 2`; resets the sample databases and creates
fleet_NNN databases on the production server, registered as targets fleet-NNN and the group `fleet`.)

Bare, the baseline measured in the same run: `manage.py migrate` per database, --parallel at a time, as a team's
script does it (no backup, no verification, no RLS); and for reference the hand-run checklist per database
(pg_dump, migrate, showmigrations), promotion_overhead.py's baseline. Ours, as a user types it: `dbpromote
promote --through staging,fleet --until-paused` with the group's --parallel and --per-server at the same number,
and `dbpromote approve` as soon as it returns; wall time from the first command to the run's end (staging's own
step included, and every member's backup, verification and RLS proof). Prints each and the ratios for each size,
so how the cost grows shows, with the flow runs and task runs each size created (what the UI lists). Goals at the
largest size: <= 1.5x the checklist loop and <= 4x the bare migrate loop (issue 34).
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from subprocess import DEVNULL

from common import deploys_stopped, local_stack, stack  # points this process at the local stack
from prefect import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterStartTime,
    TaskRunFilter,
    TaskRunFilterStartTime,
)

from dbpromote.runs import wait_for

DBPROMOTE = str(Path(sys.executable).parent / "dbpromote")
MANAGE = [sys.executable, str(local_stack.SAMPLE_PROJECT / "manage.py")]


def fresh_fleet(size: int) -> list[str]:
    """Staging and production at v1, and `size` copies of production's database as targets, registered like
    production (drift checked before the approval, blocking: the default)."""
    for server in local_stack.SERVERS:
        local_stack.reset_database(stack, server)
    return local_stack.fleet(stack, size, "fleet")


def bare(members: list[str], parallel: int, checklist: bool = False) -> float:
    """`manage.py migrate` on every member database, `parallel` at a time: seconds. With checklist, the whole
    hand-run checklist per database instead: pg_dump, migrate, showmigrations (promotion_overhead.py's baseline)."""
    base = stack.database_url("production").rsplit("/", 1)[0]

    def migrate(member: str, folder: str) -> None:
        url = f"{base}/{member.replace('-', '_')}"
        env = os.environ | {"DATABASE_URL": url}
        if checklist:
            subprocess.run(["pg_dump", "-Fc", "-f", f"{folder}/{member}.dump", url], check=True)
        for command in (["migrate", "-v0"], ["showmigrations", "core"])[: 2 if checklist else 1]:
            subprocess.run([*MANAGE, *command], env=env, check=True, cwd=local_stack.SAMPLE_PROJECT, stdout=DEVNULL)

    with tempfile.TemporaryDirectory() as folder:
        started = time.monotonic()
        with ThreadPoolExecutor(parallel) as pool:
            list(pool.map(lambda member: migrate(member, folder), members))
        return time.monotonic() - started


def typed(*args: str) -> str:
    result = subprocess.run([DBPROMOTE, *args], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result.stdout


def ours(members: list[str], parallel: int) -> tuple[float, float, int, int]:
    """The group promoted as typed, approval given at once: seconds from the command to the run's end, and of
    those, until it waited for the approval (staging's step and every member's plan); the flow runs and task runs
    it created (what the UI lists)."""
    options = ["--canary", "1", "--wave-size", "100%", "--parallel", str(parallel), "--per-server", str(parallel)]
    typed("group", "add", "fleet", "--targets", ",".join(members), *options, "--max-failures", "1")
    since = datetime.now(UTC)
    started = time.monotonic()
    promote = ["promote", "--project", "tenant-backend", "--through", "staging,fleet", "--until-paused"]
    run_id = typed(*promote).split()[0]
    paused = time.monotonic() - started
    typed("approve", run_id, "--approver", "bench", "--comment", "benchmark", "--acknowledge-risks")
    state = wait_for(run_id).state  # as `promote --wait` waits
    assert state.is_completed(), state.message
    ended = time.monotonic() - started
    return ended, paused, *created_since(since)


def created_since(since: datetime) -> tuple[int, int]:
    """The flow runs and task runs created since `since`."""
    with get_client(sync_client=True) as client:
        flows = client.count_flow_runs(flow_run_filter=FlowRunFilter(start_time=FlowRunFilterStartTime(after_=since)))
        tasks, page = 0, True
        filtered = TaskRunFilter(start_time=TaskRunFilterStartTime(after_=since))
        while page:
            page = client.read_task_runs(task_run_filter=filtered, limit=200, offset=tasks)
            tasks += len(page)
    return flows, tasks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,50,100")
    parser.add_argument("--parallel", type=int, default=4)
    args = parser.parse_args()
    rows = []
    for size in [int(size) for size in args.sizes.split(",")]:
        bare_s = bare(fresh_fleet(size), args.parallel)
        checklist_s = bare(fresh_fleet(size), args.parallel, checklist=True)
        ours_s, paused_s, flows, tasks = ours(fresh_fleet(size), args.parallel)
        rows.append((size, bare_s, checklist_s, ours_s, paused_s))
        after = (ours_s - paused_s) / size
        print(f"{size} members: bare migrate loop {bare_s:.1f} s, checklist loop {checklist_s:.1f} s, dbpromote as "
              f"typed {ours_s:.1f} s (approval asked after {paused_s:.1f} s, then {after:.2f} s a member) = "
              f"{ours_s / bare_s:.2f}x the migrate loop, {ours_s / checklist_s:.2f}x the checklist; "
              f"{flows} flow runs and {tasks} task runs created", flush=True)  # fmt: skip
    print()
    print("| members | migrate loop (s) | checklist loop (s) | dbpromote as typed (s) | of which until approval "
          "asked (s) | after approval, per member (s) | ratio to checklist (goal) | to migrate loop |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for size, bare_s, checklist_s, ours_s, paused_s in rows:
        print(f"| {size} | {bare_s:.1f} | {checklist_s:.1f} | {ours_s:.1f} | {paused_s:.1f} | "
              f"{(ours_s - paused_s) / size:.2f} | {ours_s / checklist_s:.2f}x | {ours_s / bare_s:.2f}x |")  # fmt: skip
    size, bare_s, checklist_s, ours_s, _ = rows[-1]
    for name, ratio, bound in (("checklist", ours_s / checklist_s, 1.5), ("migrate-loop", ours_s / bare_s, 4)):
        print(f"goal fleet-{size}-vs-{name}: {ratio:.2f}x (goal <= {bound:g}x): "
              f"{'met' if ratio <= bound else 'NOT MET'}")  # fmt: skip


if __name__ == "__main__":
    with deploys_stopped():
        main()
