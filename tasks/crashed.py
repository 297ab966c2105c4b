"""Crashed runs: what a dead flow run's process left Running (task runs send no heartbeat) marked Crashed too."""

from __future__ import annotations

from uuid import UUID

from prefect import get_client, get_run_logger, task
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterParentFlowRunId,
    TaskRunFilter,
    TaskRunFilterFlowRunId,
)
from prefect.states import Crashed


@task(name="close-left-running", retries=2, retry_delay_seconds=3)
def close_left_running(flow_run_id: UUID) -> list[str]:
    """Every non-final task run and subflow run of a crashed flow run, at any depth, marked Crashed; their names."""
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
    get_run_logger().info("closed what %s left running: %s", flow_run_id, ", ".join(closed) or "nothing")
    return closed
