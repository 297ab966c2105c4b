"""The Prefect events dbpromote emits (`prefect.events.emit_event`), for a team's automations (chat, paging):
dbpromote.migration.applied / .cancelled, dbpromote.deploy.waiting, dbpromote.health.passed / .failed; each names
its target as the resource."""

from __future__ import annotations

from prefect.events import emit_event


def target_resource(target_name: str) -> dict[str, str]:
    """The event's resource: the target, by a stable id an automation can match (dbpromote.target.NAME)."""
    return {"prefect.resource.id": f"dbpromote.target.{target_name}", "prefect.resource.name": target_name}


def emit(event: str, target_name: str, payload: dict) -> None:
    """The event, its resource the target."""
    emit_event(event=event, resource=target_resource(target_name), payload=payload)
