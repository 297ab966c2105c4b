"""Crashed runs as tasks: what a dead flow run's process left Running marked Crashed too, and a run marked Crashed after
it had ended given its end back (the work in dbpromote/crashes.py)."""

from uuid import UUID

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from dbpromote import crashes


@task(name="close-left-running", retries=2, retry_delay_seconds=3, cache_policy=NO_CACHE)
def close_left_running(flow_run_id: UUID) -> list[str]:
    """Every non-final task run and subflow run of a crashed flow run, at any depth, marked Crashed; their names."""
    return crashes.close_left_running(flow_run_id, note=get_run_logger().info)


@task(name="undo-a-late-crash", retries=2, retry_delay_seconds=3, cache_policy=NO_CACHE)
def undo_a_late_crash(flow_run_id: UUID) -> str:
    """The final state put back of a run marked Crashed after it had ended; its name, or "" if it had not ended."""
    return crashes.undo_a_late_crash(flow_run_id, note=get_run_logger().info)
