"""Open a maintenance window: a scheduled run, at the window's opening, that resumes the promotion waiting for it."""

from __future__ import annotations

from uuid import UUID

from dbpromote.flows.parts import flow
from prefect import get_client, get_run_logger

from dbpromote.models.approval import THE_WINDOW
from dbpromote.runs import resume


@flow(name="open-window", flow_run_name="open the window {window} of {target}")
def open_window(flow_run_id: str, key: str, target: str, window: str) -> str:
    """Resume the run suspended for this window's opening (`key`), if it still waits there: a person may have run
    it already, or cancelled it. Scheduled by the waiting run itself (dbpromote/waits.py)."""
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(UUID(flow_run_id))
        waiting = run.state is not None and run.state.is_paused() and run.state.state_details.pause_key == key
        if not waiting:
            get_run_logger().info("run %s no longer waits for %s (%s)", flow_run_id, window, run.state.name)
            return "no longer waiting"
        resume(client, run, {"opened_by": THE_WINDOW, "reason": f"the window {window} opened"})
    get_run_logger().info("opened %s for run %s on %s", window, flow_run_id, target)
    return "opened"
