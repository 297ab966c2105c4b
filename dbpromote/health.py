"""After a target migrates, the application is asked whether it still works: a health URL and/or a smoke command,
as a team's deploy pipeline asks it (the guide's "verify application works after migration")."""

from __future__ import annotations

import os
import shlex
import subprocess
import time

import httpx

from dbpromote.config import DatabaseTarget, DjangoProject
from dbpromote.errors import redact
from dbpromote.models.report import Health

SMOKE_TIMEOUT_S = 300


def check_application(project: DjangoProject, target: DatabaseTarget) -> Health:
    """The target's health URL (a 2xx within health_tries tries spread over health_within_s) and smoke command
    (exit 0), those it has."""
    checks: list[tuple[bool, str]] = []
    if target.health_url:
        checks.append(health_url(target))
    if target.smoke_command:
        checks.append(smoke_command(project, target))
    return Health(passed=all(ok for ok, _ in checks), checks=[line for _, line in checks])


def health_url(target: DatabaseTarget) -> tuple[bool, str]:
    pause = target.health_within_s / max(1, target.health_tries)
    answer = ""
    for attempt in range(1, target.health_tries + 1):
        try:
            response = httpx.get(target.health_url, timeout=max(1.0, pause), follow_redirects=True)
            answer = f"HTTP {response.status_code}"
            if response.is_success:
                return True, f"{target.health_url} answered {answer} (try {attempt})"
        except httpx.HTTPError as error:
            answer = f"{type(error).__name__}: {error}"
        if attempt < target.health_tries:
            time.sleep(pause)
    return False, f"{target.health_url} answered {answer} on each of {target.health_tries} tries"


def smoke_command(project: DjangoProject, target: DatabaseTarget) -> tuple[bool, str]:
    """The command in the project's folder, with the environment its settings read for this target (a
    `manage.py ...` command runs with the project's interpreter)."""
    url = target.url.get_secret_value()
    command = shlex.split(target.smoke_command)
    if command and command[0] == "manage.py":
        command = [project.interpreter(), *command]
    env = project.environment(url)
    try:
        done = subprocess.run(
            command,
            cwd=project.path,
            env=os.environ | env,
            capture_output=True,
            text=True,
            timeout=SMOKE_TIMEOUT_S,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        return False, f"`{target.smoke_command}` did not run: {error}"
    if done.returncode == 0:
        return True, f"`{target.smoke_command}` exited 0"
    said = redact((done.stderr or done.stdout).strip()[-300:], url, target.conninfo.password)
    return False, f"`{target.smoke_command}` exited {done.returncode}: {said}"
