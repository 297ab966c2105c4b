"""Crashed runs: what a dead flow run's process left Running (task runs send no heartbeat) marked Crashed too; and
a run that had ended before it was marked Crashed given its end back."""

from __future__ import annotations

from uuid import UUID

from prefect import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterParentFlowRunId,
    TaskRunFilter,
    TaskRunFilterFlowRunId,
)
from prefect.client.schemas.objects import State
from prefect.states import Crashed

from dbpromote.run_context import run_logger


def close_left_running(flow_run_id: UUID) -> list[str]:
    """Every non-final task run and subflow run of a crashed flow run, at any depth, marked Crashed; their names
    (logged too)."""
    closed: list[str] = []
    with get_client(sync_client=True) as client:
        runs = [flow_run_id]
        while runs:
            run_id = runs.pop()
            for task_run in client.read_task_runs(
                task_run_filter=TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(any_=[run_id]))
            ):
                if task_run.state and not task_run.state.is_final():
                    message = f"its flow run {run_id} crashed while it was {task_run.state.name}"
                    client.set_task_run_state(task_run.id, Crashed(message=message), force=True)
                    closed.append(task_run.name)
            for child in client.read_flow_runs(
                flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[run_id]))
            ):
                if child.state and not child.state.is_final():
                    message = f"its parent flow run {run_id} crashed while it was {child.state.name}"
                    client.set_flow_run_state(child.id, Crashed(message=message), force=True)
                    closed.append(child.name)
                runs.append(child.id)
    run_logger().info("closed what %s left running: %s", flow_run_id, ", ".join(closed) or "nothing")
    return closed


def undo_a_late_crash(flow_run_id: UUID) -> str:
    """The final state put back of a run marked Crashed after it had ended; the state's name, or "" for a run that
    had not ended. A run that ends within a second of starting can have its first heartbeat reach the server after
    its Completed (the client sends events in the background; the server records states at once): the crash
    automation takes that heartbeat for a sign of life and, 90 s of silence later, marks the ended run Crashed
    (seen on a window's opener, flows/window.py)."""
    with get_client(sync_client=True) as client:
        states = sorted(client.read_flow_run_states(flow_run_id), key=lambda state: state.timestamp)
        if len(states) < 2 or not states[-1].is_crashed() or not states[-2].is_final() or states[-2].is_crashed():
            return ""
        ended = states[-2]
        back = State(type=ended.type, name=ended.name, message=ended.message, data=ended.data)
        client.set_flow_run_state(flow_run_id, back, force=True)
    run_logger().info("%s had ended %s before it was marked Crashed: %s again", flow_run_id, ended.name, ended.name)
    return ended.name
