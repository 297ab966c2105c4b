"""The probe client: dbpromote/probe/django_probe.py run in the project's own interpreter, its answers typed.

The worker never imports the project; the probe does, with the project's interpreter and settings, and answers
one JSON line per request (protocol.py). Here those lines become the protocol's dataclasses, validated by
pydantic; a line that is none of them is a ProbeFailure naming what came back.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import tempfile
from pathlib import Path
from typing import Annotated

from pydantic import Field, TypeAdapter, ValidationError

from dbpromote.config import DatabaseTarget, DjangoProject
from dbpromote.errors import ConfigError, redact
from dbpromote.lifeline import PARENT_PID
from dbpromote.probe.protocol import Answer, FailureAnswer, PlanAnswer, StepAnswer

PROBE = Path(__file__).with_name("django_probe.py")
PROBE_TIMEOUT_S = 600
ANSWER = TypeAdapter(Annotated[Answer, Field(discriminator="kind")])

__all__ = ["FailureAnswer", "PlanAnswer", "ProbeSession", "StepAnswer", "run_probe", "start_probe"]


def start_probe(
    project: DjangoProject, target: DatabaseTarget, *args: str, **popen
) -> tuple[subprocess.Popen, list[str]]:
    """The probe in the project's interpreter against the target: its URL, and whatever the project's settings
    read, in the environment (never argv). With it, the secret values to mask in anything it prints."""
    url = target.url.get_secret_value()
    project_env = project.environment(url)  # Secret blocks read once here
    secrets = [url, *(project_env[variable] for variable in project.env_secrets)]
    env = os.environ | project_env | {"DBPROMOTE_DATABASE_URL": url, "PYTHONUNBUFFERED": "1"}
    env[PARENT_PID] = str(os.getpid())
    command = [project.interpreter(), str(PROBE), *args, "--settings", project.settings_module]
    command += ["--database", target.database_alias]
    try:
        process = subprocess.Popen(
            command, cwd=project.path, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, **popen
        )
        return process, secrets
    except FileNotFoundError:
        raise ConfigError(
            f"The project's interpreter {project.interpreter()} does not exist; set the right one with "
            "`dbpromote project add NAME --python PATH`."
        ) from None


def parse_answer(line: bytes | str) -> Answer | None:
    """The protocol's answer on one line; None for a line that is not JSON (the probe died before answering)."""
    try:
        document = json.loads(line)
    except json.JSONDecodeError:
        return None
    try:
        return ANSWER.validate_python(document)
    except ValidationError as error:
        raise ConfigError(
            f"The probe answered something this dbpromote does not understand ({str(document)[:200]}: "
            f"{error.errors()[0]['msg']}); the probe and the worker come from different versions: reinstall dbpromote."
        ) from None


def run_probe(project: DjangoProject, target: DatabaseTarget, *args: str, timeout: float = PROBE_TIMEOUT_S) -> Answer:
    """Run the probe once; its answer (messages with secrets masked), or a ConfigError naming the fix."""
    process, secrets = start_probe(project, target, *args, stderr=subprocess.PIPE)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        stdout, stderr = process.communicate()
    lines = stdout.decode(errors="replace").strip().splitlines()
    answer = parse_answer(lines[-1]) if lines else None
    if isinstance(answer, FailureAnswer):
        answer.message = redact(answer.message, *secrets)
    if answer is None:
        tail = redact(stderr.decode(errors="replace").strip()[-500:], *secrets)
        raise ConfigError(
            f"The project's interpreter {project.interpreter()} could not run the probe (exit {process.returncode}): "
            f"{tail}; check that it is the project's Python with Django installed."
        )
    return answer


class ProbeSession:
    """One probe process in the project's interpreter that applies (or reverses) migrations on request.

    Django starts once for a whole environment step, not once per migration (~0.4 s each); the process starts at
    the first request and ends with the session.
    """

    def __init__(self, project: DjangoProject, target: DatabaseTarget):
        self.project, self.target, self.process, self.secrets = project, target, None, []
        self.stderr = tempfile.TemporaryFile()

    def __enter__(self) -> ProbeSession:
        return self

    def __exit__(self, *exc) -> None:
        if self.process is not None:
            self.process.stdin.close()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.stderr.close()

    def request(self, app: str, name: str, backwards: bool) -> StepAnswer | FailureAnswer:
        """The probe's outcome of one migration step, as `migrate_one`/`reverse_one` report it."""
        if self.process is None:
            self.process, self.secrets = start_probe(
                self.project, self.target, *self._serve_arguments(), stderr=self.stderr
            )
        line = json.dumps({"app": app, "name": name, "backwards": backwards})
        try:
            self.process.stdin.write(line.encode() + b"\n")
            self.process.stdin.flush()
        except BrokenPipeError:
            pass  # it died; reported below from what it wrote
        ready, _, _ = select.select([self.process.stdout], [], [], PROBE_TIMEOUT_S)
        answer = parse_answer(self.process.stdout.readline()) if ready else None
        if isinstance(answer, StepAnswer | FailureAnswer):
            return answer
        if answer is not None:
            raise ConfigError(f"The probe answered a migration step with a {answer.kind}; reinstall dbpromote.")
        self.stderr.seek(0)
        tail = redact(self.stderr.read().decode(errors="replace").strip()[-500:], *self.secrets)
        return FailureAnswer(reason="error", message=f"the probe process ended or hung: {tail}")

    def _serve_arguments(self) -> list[str]:
        return [
            "serve",
            "--lock-timeout-ms",
            str(self.target.lock_timeout_ms),
            "--statement-timeout-ms",
            str(self.target.statement_timeout_ms),
        ]
