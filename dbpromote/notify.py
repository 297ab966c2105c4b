"""Notify: tell people a promotion waits for them, or that a run failed, through a Prefect notification block."""

from __future__ import annotations

import logging

from prefect.blocks.core import Block
from prefect.blocks.notifications import NotificationBlock
from prefect.settings import PREFECT_UI_URL

# Any notification block type (generic webhook, Slack, email...) under this name; none registered, none sent.
NOTIFICATION_BLOCK = "dbpromote-notifications"
logger = logging.getLogger("dbpromote.notify")


def run_url(run_id) -> str:
    return f"{PREFECT_UI_URL.value()}/runs/flow-run/{run_id}"


def notify(subject: str, body: str) -> bool:
    """Send through the first notification block named NOTIFICATION_BLOCK; False when there is none."""
    concrete = [sub for cls in NotificationBlock.__subclasses__() for sub in [cls, *cls.__subclasses__()]]
    for block_type in concrete:
        slug = block_type.get_block_type_slug()
        if slug.startswith("abstract"):
            continue
        try:
            block = Block.load(f"{slug}/{NOTIFICATION_BLOCK}")
        except (ValueError, KeyError):
            continue
        try:
            block.notify(body, subject=subject)
        except Exception as error:  # a notification must never fail the work it reports on
            logger.warning("notification through %s failed: %s", slug, error)
            return False
        return True
    return False


def notify_failure(flow, flow_run, state) -> None:
    """Prefect on_failure hook for every deployed flow: the run's URL and its one-line reason."""
    reason = (state.message or "failed").splitlines()[0][:500]
    notify(f"dbpromote: {flow_run.name} failed", f"{flow_run.name} failed: {reason} {run_url(flow_run.id)}")
