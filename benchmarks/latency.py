"""Benchmark: how long a command takes to get its run going, and to notice where it got to, as a user types it.

Usage: .venv/bin/python benchmarks/latency.py [--rounds 5]   (local stack up first; resets both sample databases)

For `dbpromote backup staging --wait`, `dbpromote promote ... --until-paused` and `dbpromote approve RUN`: from
the command typed to its run's first task (or, for approve, the first task after the pause), and from the run's
end (or pause) to the command's return; medians of the rounds. Goals: trigger to first task <= 2 s; end to
return <= 1 s. The baseline, measured in the same run, is the Python interpreter starting and importing
dbpromote's CLI (`dbpromote --help`): the part of every command no orchestration can save. Beside it, Prefect's
own floor on the same pool and worker: a deployment of a one-task flow that imports nothing but Prefect
(latency_floor_flow.py), from its run's creation to its first task.
"""

import argparse
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from uuid import UUID

from common import deploys_stopped, local_stack, stack

DBPROMOTE = str(Path(sys.executable).parent / "dbpromote")


def typed(*args: str) -> tuple[datetime, str, datetime]:
    """The command as typed: when it started, its first word of output (the run id), when it returned."""
    started = datetime.now(UTC)
    result = subprocess.run([DBPROMOTE, *args], capture_output=True, text=True)
    returned = datetime.now(UTC)
    assert result.returncode == 0, result.stderr
    return started, (result.stdout.split() or [""])[0], returned


def task_starts(run_id: str) -> list[datetime]:
    from prefect import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterFlowRunId

    with get_client(sync_client=True) as client:
        tasks = client.read_task_runs(task_run_filter=TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(any_=[run_id])))
    return sorted(task.start_time for task in tasks if task.start_time)


def created(run_id: str) -> datetime:
    from prefect import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(UUID(run_id)).created


def state_time(run_id: str, kind: str) -> datetime:
    """When the run last entered a state of this kind ("PAUSED", "COMPLETED", ...)."""
    from prefect import get_client

    with get_client(sync_client=True) as client:
        states = client.read_flow_run_states(UUID(run_id))
    return max(state.timestamp for state in states if state.type.value == kind)


def wait_final(run_id: str) -> None:
    from prefect import get_client

    with get_client(sync_client=True) as client:
        while not client.read_flow_run(UUID(run_id)).state.is_final():
            time.sleep(0.2)


def seconds(later: datetime, earlier: datetime) -> float:
    return (later - earlier).total_seconds()


def deploy_floor() -> None:
    """The one-task flow as a deployment on the stack's pool (its worker runs it from this folder)."""
    from prefect import flow

    source = flow.from_source(source=str(Path(__file__).parent), entrypoint="latency_floor_flow.py:latency_floor")
    source.deploy(name="latency-floor", work_pool_name="dbpromote", print_next_steps=False)


def floor() -> float:
    """Prefect's own time from a run's creation to its first task, for a flow that does nothing else."""
    from prefect.deployments import run_deployment

    run = run_deployment("latency-floor/latency-floor", timeout=120, poll_interval=0.2)
    return seconds(task_starts(str(run.id))[0], created(str(run.id)))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    figures: dict[str, list[float]] = {}

    def note(name: str, value: float) -> None:
        figures.setdefault(name, []).append(value)

    deploy_floor()
    for _ in range(args.rounds):
        note("Prefect's floor: a one-task run created -> its task", floor())
        started = time.monotonic()
        subprocess.run([DBPROMOTE, "--help"], check=True, capture_output=True)
        note("interpreter + CLI import (baseline)", time.monotonic() - started)

        typed_at, run_id, returned = typed("backup", "staging", "--wait")
        note("backup: typed -> first task", seconds(task_starts(run_id)[0], typed_at))
        note("  of which the command until the run exists", seconds(created(run_id), typed_at))
        note("backup: run end -> return", seconds(returned, state_time(run_id, "COMPLETED")))

        for server in local_stack.SERVERS:
            local_stack.reset_database(stack, server)
        typed_at, run_id, returned = typed(
            "promote", "--project", "tenant-backend", "--through", "staging,production", "--until-paused"
        )
        paused = state_time(run_id, "PAUSED")
        note("promote: typed -> first task", seconds(task_starts(run_id)[0], typed_at))
        note("  of which the command until the run exists ", seconds(created(run_id), typed_at))
        note("promote: pause -> return", seconds(returned, paused))

        typed_at, _, _ = typed("approve", run_id, "--approver", "benchmark", "--acknowledge-risks")
        wait_final(run_id)
        after = [start for start in task_starts(run_id) if start > typed_at]
        note("approve: typed -> first task after the pause", seconds(after[0], typed_at))
        note("approve: typed -> run end (production migrated)", seconds(state_time(run_id, "COMPLETED"), typed_at))
        print(", ".join(f"{name} {values[-1]:.2f} s" for name, values in figures.items()), flush=True)

    baseline = statistics.median(figures["interpreter + CLI import (baseline)"])
    print(f"medians of {args.rounds} rounds")
    for name, values in figures.items():
        value = statistics.median(values)
        goal = " (goal <= 2)" if "first task" in name else " (goal <= 1)" if "-> return" in name else ""
        print(f"{name:<48} {value:6.2f} s  {value / baseline:5.1f}x baseline{goal}")


if __name__ == "__main__":
    with deploys_stopped():
        main()
