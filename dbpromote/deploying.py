"""Deploying dbpromote to a Prefect server: a work pool from the base job template in deployments/, prefect.yaml's
deployments on it (registered from the installed package), and the automations that mark a dead run Crashed."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

from dbpromote.errors import ConfigError

# deployments/ (installed as dbpromote.deployments): prefect.yaml, the job templates; data this module reads.
TEMPLATES = Path(importlib.util.find_spec("dbpromote.deployments").origin).parent
# prefect.yaml's work pool, and the base job template of its process worker (the local stack's).
WORK_POOL = "dbpromote"
PROCESS_TEMPLATE = TEMPLATES / "process.json"
# The deployments, for `prefect deploy` from a checkout (the repository's root links here) and for `dbpromote deploy`.
PREFECT_YAML = TEMPLATES / "prefect.yaml"


def create_work_pool(
    api_url: str,
    name: str = WORK_POOL,
    template: Path = PROCESS_TEMPLATE,
    kind: str = "process",
    replace: bool = True,
    command: str | None = None,
) -> bool:
    """The work pool with the base job template: created, or its template replaced (unless not `replace`: a team's
    own pool is left as it is); its runs started with `command` when given (dbpromote/warm.py's), else as Prefect
    starts them. Whether it was created or replaced."""
    from prefect import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import PREFECT_API_URL, temporary_settings

    base_job_template = json.loads(template.read_text())
    if command:
        base_job_template["variables"]["properties"]["command"]["default"] = command
    pool = WorkPoolCreate(name=name, type=kind, base_job_template=base_job_template)
    with temporary_settings({PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
        if not replace:
            try:
                client.read_work_pool(name)
                return False
            except ObjectNotFound:
                pass
        client.create_work_pool(pool, overwrite=True)
    return True


def deploy_flows(api_url: str, pool: str = WORK_POOL) -> list[str]:
    """prefect.yaml's deployments (shipped in deployments/) registered from the installed package on the server at
    api_url and the work pool `pool`: module entrypoints (`dbpromote.flows.promote.promote`), so that any worker
    where dbpromote is installed runs them, without a checkout or a pull step; names, descriptions, parameters and
    schedules and event triggers as prefect.yaml has them. The names registered."""
    import yaml
    from prefect.deployments.runner import EntrypointType
    from prefect.events import DeploymentEventTrigger
    from prefect.flows import load_flow_from_entrypoint
    from prefect.schedules import Cron
    from prefect.settings import PREFECT_API_URL, temporary_settings

    names = []
    with temporary_settings({PREFECT_API_URL: api_url}):
        for entry in yaml.safe_load(PREFECT_YAML.read_text())["deployments"]:
            path, _, function = entry["entrypoint"].partition(":")
            flow = load_flow_from_entrypoint(f"dbpromote.{path.removesuffix('.py').replace('/', '.')}.{function}")
            deployment = flow.to_deployment(
                name=entry["name"],
                description=entry.get("description"),
                parameters=entry.get("parameters", {}),
                schedules=[Cron(s["cron"], timezone=s.get("timezone")) for s in entry.get("schedules", [])],
                triggers=[DeploymentEventTrigger(**trigger) for trigger in entry.get("triggers", [])],
                entrypoint_type=EntrypointType.MODULE_PATH,
            )
            deployment.apply(work_pool_name=pool)
            names.append(f"{flow.name}/{entry['name']}")
    return names


# A run of dbpromote's flows emits a heartbeat every HEARTBEAT_S (dbpromote's own thread, flows/parts.py:
# DBPROMOTE_HEARTBEAT_S sets it apart); one silent for CRASHED_AFTER_S is taken for dead. Prefect's documented pair:
# three missed heartbeats, so a run slowed by a CPU-bound dump is never taken for dead, and a dead one is marked
# within 90 s. DBPROMOTE_CRASHED_AFTER_S shortens it where a dead run must be found sooner (the test suite, its
# heartbeats every 10 s: 30 s), never below two heartbeats (a heartbeat late must not be taken for dead) nor below
# Prefect's floor for a watch (10 s).
HEARTBEAT_S = 30
CRASHED_AFTER_S = 90
SHORTEST_WATCH_S = 10
CRASH_AUTOMATION = "dbpromote: crash silent flow runs"
CLOSE_AUTOMATION = "dbpromote: close what a crashed run left running"
CLOSE_DEPLOYMENT = "close-crashed/close-crashed"
CLOSE_FLOW = CLOSE_DEPLOYMENT.partition("/")[0]


def heartbeat_s() -> int:
    """The seconds between a run's heartbeats: DBPROMOTE_HEARTBEAT_S, or 30."""
    given = os.environ.get("DBPROMOTE_HEARTBEAT_S", "")
    if given and (not given.isdigit() or int(given) < 1):
        raise ConfigError(
            f"DBPROMOTE_HEARTBEAT_S is {given!r}: it must be a whole number of seconds, at least 1; set one, or unset "
            f"it for the default {HEARTBEAT_S}."
        )
    return int(given) if given else HEARTBEAT_S


def crashed_after_s() -> int:
    """The seconds of silence after which a flow run is taken for dead: DBPROMOTE_CRASHED_AFTER_S, or 90."""
    given = os.environ.get("DBPROMOTE_CRASHED_AFTER_S", "")
    if not given:
        return CRASHED_AFTER_S
    shortest = max(2 * heartbeat_s(), SHORTEST_WATCH_S)
    if not given.isdigit() or int(given) < shortest:
        raise ConfigError(
            f"DBPROMOTE_CRASHED_AFTER_S is {given!r}: it must be a whole number of seconds, at least {shortest} "
            f"(two heartbeats, and never under {SHORTEST_WATCH_S}); set one, or unset it for the default "
            f"{CRASHED_AFTER_S}."
        )
    return int(given)


def install_crash_detection(api_url: str, silent_s: int) -> None:
    """The automations that mark a flow run silent for `silent_s` Crashed (its subflows too: each sends heartbeats)
    and then close its task runs (tasks send none) through the close-crashed deployment; replaced when present."""
    from prefect import get_client
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api_url}):
        with get_client(sync_client=True) as client:
            for name in (CRASH_AUTOMATION, CLOSE_AUTOMATION):
                for existing in client.read_automations_by_name(name=name):
                    client.delete_automation(existing.id)
            try:
                closer = client.read_deployment_by_name(CLOSE_DEPLOYMENT)
            except ObjectNotFound:  # the package without the repository's deployments: runs are still marked
                closer = None
        _silent_runs_crashed(silent_s).create()
        if closer is not None:
            _close_what_crashed_left(closer.id).create()


def _silent_runs_crashed(silent_s: int):
    """The automation that marks a run of dbpromote's flows Crashed once it has been silent for `silent_s`."""
    from datetime import timedelta

    from prefect.automations import Automation
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import EventTrigger, Posture
    from prefect.events.schemas.events import ResourceSpecification

    flow_runs = ResourceSpecification({"prefect.resource.id": "prefect.flow-run.*"})
    # dbpromote's runs alone: a team's own flows on its server send heartbeats as they were set to, or none.
    ours = ResourceSpecification({"prefect.resource.role": "flow", "prefect.resource.name": flow_names()})
    # Suspended: waiting for an approval, the run has left its process on purpose (dbpromote/waits.py).
    ended = {f"prefect.flow-run.{state}" for state in ("Completed", "Failed", "Cancelled", "Crashed", "Suspended")}
    # Any sign of life starts the watch and renews it: a heartbeat (Prefect's own recipe watches only these), and
    # Pending and Running. With heartbeats alone, a run resumed from Suspended was never watched again if its
    # process died (with its worker) before its first heartbeat: it stayed Running for good. Pending and Running
    # must also be expected, not only start the watch: Prefect renews a watch only on an event that does both, and
    # the Suspended that closed the previous watch keeps it open, satisfied, for the rest of its 90 s, swallowing a
    # prompt resume's Pending and Running (tests/test_crash_resume.py, killed before its first heartbeat).
    alive = {"prefect.flow-run.heartbeat", "prefect.flow-run.Pending", "prefect.flow-run.Running"}
    return Automation(
        name=CRASH_AUTOMATION,
        description=f"No heartbeat for {silent_s} s: the run's process is gone (killed, machine lost).",
        trigger=EventTrigger(
            match=flow_runs,
            match_related=ours,
            after=alive,
            expect=alive | ended,
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=silent_s),
        ),
        actions=[
            ChangeFlowRunState(
                state=StateType.CRASHED,
                message=f"No heartbeat for {silent_s} s: its process died; `dbpromote resume` carries a "
                "promotion on from here.",
                force=True,  # a run killed while paused for approval is Paused, not Running
            )
        ],
    )


def flow_names() -> list[str]:
    """The names of dbpromote's flows, those run inside another's process included."""
    import importlib
    import pkgutil

    from prefect import Flow

    from dbpromote import flows

    names = set()
    for module in pkgutil.iter_modules(flows.__path__):
        found = vars(importlib.import_module(f"{flows.__name__}.{module.name}")).values()
        names |= {flow.name for flow in found if isinstance(flow, Flow)}
    return sorted(names)


def _close_what_crashed_left(closer_id):
    """The automation that runs the close-crashed deployment for every flow run marked Crashed (but its own)."""
    from prefect.automations import Automation
    from prefect.events.actions import RunDeployment
    from prefect.events.schemas.automations import EventTrigger, Posture
    from prefect.events.schemas.events import ResourceSpecification

    flow_runs = ResourceSpecification({"prefect.resource.id": "prefect.flow-run.*"})
    return Automation(
        name=CLOSE_AUTOMATION,
        description="Task runs send no heartbeats: those a crashed flow run left Running are marked Crashed.",
        # Not for a close-crashed run: it ends within a second, its heartbeat can reach the server after
        # its Completed, and the watch that starts then marks it Crashed 90 s later; closing it started
        # another, which was marked Crashed in turn: a run every 95 s for good (seen on a test stack).
        trigger=EventTrigger(
            match=flow_runs,
            match_related=ResourceSpecification(
                {"prefect.resource.role": "flow", "prefect.resource.name": f"!{CLOSE_FLOW}"}
            ),
            expect={"prefect.flow-run.Crashed"},
            posture=Posture.Reactive,
            threshold=1,
        ),
        actions=[
            RunDeployment(
                source="selected",
                deployment_id=closer_id,
                parameters={"flow_run": "{{ event.resource.id }}"},
            )
        ],
    )
