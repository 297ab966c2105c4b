"""Close a crashed run: started by the automation the stack installs when a flow run is marked Crashed."""

from __future__ import annotations

from uuid import UUID

from dbpromote.flows.parts import flow
from dbpromote.tasks.crashed import close_left_running, undo_a_late_crash


@flow(name="close-crashed", flow_run_name="close what {flow_run} left running")
def close_crashed(flow_run: str) -> list[str]:
    """The task runs and subflows a crashed run's dead process left Running, marked Crashed with it.

    flow_run is the run's id, or the event resource naming it (`prefect.flow-run.<id>`). A run that had ended
    before it was marked Crashed gets its end back, and left nothing running.
    """
    run_id = UUID(flow_run.removeprefix("prefect.flow-run."))
    if undo_a_late_crash(run_id):
        return []
    return close_left_running(run_id)
