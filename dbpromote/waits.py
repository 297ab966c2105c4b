"""What a paused run waits for, written in its pause key: the tasks that pause write it (tasks/approval.py,
tasks/window.py), `pending` and the answers read it (runs.py). An approval's key has neither prefix."""

from __future__ import annotations

from datetime import UTC, datetime

DEPLOY_KEY_PREFIX = "deploy-"  # the app's deploy, between a promotion's two phases: `deployed` answers only these
WINDOW_KEY_PREFIX = "window-"  # a maintenance window, the opening's time after it
KEY_TIME = "%Y%m%d%H%M"  # pause keys take lowercase letters, digits and dashes only


def kind(pause_key: str) -> str:
    """ "deploy", "window" or "approval"."""
    if pause_key.startswith(DEPLOY_KEY_PREFIX):
        return "deploy"
    return "window" if pause_key.startswith(WINDOW_KEY_PREFIX) else "approval"


def window_key(opens: datetime, subject: str) -> str:
    """The key of a wait for the window opening at `opens`."""
    return f"{WINDOW_KEY_PREFIX}{opens:{KEY_TIME}}-{subject}"


def opens_at(pause_key: str) -> datetime | None:
    """When the window a paused run waits for opens, from its wait's key; None for another kind of wait."""
    if kind(pause_key) != "window":
        return None
    return datetime.strptime(pause_key.removeprefix(WINDOW_KEY_PREFIX).split("-")[0], KEY_TIME).replace(tzinfo=UTC)
