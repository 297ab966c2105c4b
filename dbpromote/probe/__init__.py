"""The probe client: dbpromote/probe/django_probe.py run in the project's own interpreter, its answers typed.

The worker never imports the project; the probe does, with the project's interpreter and settings, and answers
one JSON line per request (protocol.py). Here those lines become the protocol's dataclasses, validated by
pydantic; a line that is none of them is a ProbeFailure naming what came back.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO, Annotated

from pydantic import Field, TypeAdapter, ValidationError

from dbpromote.config import DatabaseTarget, DjangoProject
from dbpromote.errors import ConfigError, FixError, redact
from dbpromote.lifeline import PARENT_PID
from dbpromote.probe.protocol import (
    Answer,
    FailureAnswer,
    ModelsAnswer,
    PlanAnswer,
    ProofAnswer,
    RowsAnswer,
    StepAnswer,
)

PROBE = Path(__file__).with_name("django_probe.py")
PROBE_TIMEOUT_S = 600
ANSWER = TypeAdapter(Annotated[Answer, Field(discriminator="kind")])

__all__ = [
    "FailureAnswer",
    "ModelsAnswer",
    "PlanAnswer",
    "ProbeFailure",
    "ProofAnswer",
    "ProbeSession",
    "ProbeTransaction",
    "RowsAnswer",
    "StepAnswer",
    "run_probe",
    "start_probe",
]


def start_probe(
    project: DjangoProject, target: DatabaseTarget, *args: str, application_name: str = "", **popen
) -> tuple[subprocess.Popen, list[str]]:
    """The probe in the project's interpreter against the target: its URL, and whatever the project's settings
    read, in the environment (never argv). With it, the secret values to mask in anything it prints.
    `application_name`: what its database sessions call themselves (dbpromote/watch.py finds them by it)."""
    url, conninfo = target.url.get_secret_value(), target.conninfo
    project_env = project.environment(url)  # Secret blocks read once here
    secrets = [url, conninfo.password, *(project_env[variable] for variable in project.env_secrets)]
    database = json.dumps(conninfo.django())
    env = os.environ | project_env | {"DBPROMOTE_DATABASE": database, "PYTHONUNBUFFERED": "1"}
    env[PARENT_PID] = str(os.getpid())
    if application_name:
        env["DBPROMOTE_APPLICATION_NAME"] = application_name
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
    return masked(answer, project, secrets, lambda: f"(exit {process.returncode}): {redact(tail(stderr), *secrets)}")


def masked(answer: Answer | None, project: DjangoProject, secrets: list[str], why: Callable[[], str]) -> Answer:
    """The answer with secrets masked in its message; a ConfigError naming the fix when the probe gave none (`why`
    says how it ended)."""
    if answer is None:
        raise ConfigError(
            f"The project's interpreter {project.interpreter()} could not run the probe {why()}; "
            "check that it is the project's Python with Django installed."
        )
    if isinstance(answer, FailureAnswer):
        answer.message = redact(answer.message, *secrets)
    return answer


def tail(stderr: bytes) -> str:
    """The end of what the probe wrote to stderr: where a Python traceback names its cause."""
    return stderr.decode(errors="replace").strip()[-500:]


def ending(process: subprocess.Popen, stderr: IO[bytes], secrets: list[str]) -> str:
    """How a long-lived probe (a session's, a fix's) ended without an answer, and the end of its stderr file."""
    try:
        code = process.wait(timeout=5)  # it closed its output: exiting, perhaps not yet reaped
    except subprocess.TimeoutExpired:
        code = None
    stderr.seek(0)
    how = f"exit {code}" if code is not None else f"no answer in {PROBE_TIMEOUT_S:g} s"
    return f"({how}): {redact(tail(stderr.read()), *secrets)}"


class ProbeSession:
    """One probe process in the project's interpreter that plans and applies (or reverses) migrations on request.

    Django starts once for a whole environment step (its plan, every migration, the plan verify checks), or for
    the planning of every target of a promotion, not once per request (~0.4 s each); the process starts at the
    first request and ends with the session.
    """

    def __init__(self, project: DjangoProject, target: DatabaseTarget):
        self.project, self.target, self.process, self.secrets = project, target, None, []
        self.stderr = tempfile.TemporaryFile()
        self.application_name = f"dbpromote-{uuid.uuid4().hex[:12]}"  # its sessions' name: the watcher's handle

    def __enter__(self) -> ProbeSession:
        return self

    def __exit__(self, *exc) -> None:
        if self.process is not None:
            try:
                self.process.stdin.close()
            except BrokenPipeError:
                pass  # it died with a request unread; how it ended is reported already
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.stderr.close()

    def request(self, app: str, name: str, backwards: bool, lock_timeout_ms: int = 0) -> StepAnswer | FailureAnswer:
        """The probe's outcome of one migration step, as `migrate_one`/`reverse_one` report it (lock_timeout_ms:
        its own, instead of the target's)."""
        request = {"app": app, "name": name, "backwards": backwards}
        answer = self._ask(request | ({"lock_timeout_ms": lock_timeout_ms} if lock_timeout_ms else {}))
        if isinstance(answer, StepAnswer | FailureAnswer):
            return answer
        if answer is not None:
            raise ConfigError(f"The probe answered a migration step with a {answer.kind}; reinstall dbpromote.")
        return FailureAnswer(
            reason="error",
            message=f"the probe process gave no answer {ending(self.process, self.stderr, self.secrets)}",
        )

    def after_migrating(self, steps: list[tuple[str, str, bool]]) -> StepAnswer | FailureAnswer:
        """Django's post_migrate sent once for a step's migrations ((app, name, backwards) each), as `migrate`
        sends it after its plan (django_probe.after_migrating)."""
        answer = self._answer({"after_migrating": steps})
        if not isinstance(answer, StepAnswer | FailureAnswer):
            raise ConfigError(f"The probe answered post_migrate with a {answer.kind}; reinstall dbpromote.")
        return answer

    def retarget(self, target: DatabaseTarget) -> None:
        """The session's next requests on `target`, another database of the same project (a lane's next member),
        without starting Django again (~0.7 s of CPU a member under load): the probe rebuilds its alias from the
        project's settings for it and opens a new connection (django_probe.retarget); its URL and password join the
        secrets masked. A target on another alias gets a new process."""
        if self.process is None or target is self.target:
            self.target = target
            return
        if target.database_alias != self.target.database_alias:
            self.target = target
            self.renew()
            return
        request = {"retarget": target.conninfo.django(), "lock_timeout_ms": target.lock_timeout_ms}
        request["statement_timeout_ms"] = target.statement_timeout_ms
        answer = self._ask(request, target.url.get_secret_value(), target.conninfo.password)
        if not isinstance(answer, StepAnswer):
            failed = isinstance(answer, FailureAnswer)
            why = answer.message if failed else ending(self.process, self.stderr, self.secrets)
            raise ConfigError(
                f"The probe could not move to {target.conninfo.database} ({redact(str(why), *self.secrets)}); "
                "report it with the project's settings."
            )
        self.target = target

    def renew(self) -> None:
        """Its process ended, a new one to start at the next request: Django imports a migration module once, and
        the project's files may change while a person decides (a promotion's waits)."""
        self.__exit__()
        self.__init__(self.project, self.target)

    def stop_between_statements(self) -> None:
        """Ask the migration step in progress to stop before its next statement (it answers "stopped")."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGUSR1)

    def plan(self, to: str, target: DatabaseTarget | None = None) -> Answer:
        """The plan up to `to` of the session's target, or of another target of the project, as run_probe("plan")
        answers it."""
        return self._on(target or self.target, {"plan": to})

    def replay(self, target: DatabaseTarget, plus: str, into: str, cache: str, salt: str) -> Answer:
        """`target`'s history and the key of the schema it produces; its names from the replay `cache` keeps under
        that key, or the migrations replayed into the empty database `into` (django_probe.replay)."""
        return self._on(target, {"replay": {"plus": plus, "into": into, "cache": cache, "salt": salt}})

    def _on(self, target: DatabaseTarget, request: dict) -> Answer:
        """The answer to `request` on `target`: the session's, or another of the project's (its connection sent
        over the pipe: never argv or the environment); one on another alias gets a process of its own."""
        if target.database_alias != self.target.database_alias:
            with ProbeSession(self.project, target) as other:
                return other._on(target, request)
        url = target.url.get_secret_value()
        if url != self.target.url.get_secret_value():
            request = request | {"database": target.conninfo.django()}
        return self._answer(request, url, target.conninfo.password)

    def prove(self, applied: list[tuple[str, str]]) -> ProofAnswer:
        """The models at `applied` (the release running before the plan) run against the session's target."""
        answer = self._answer({"prove": applied})
        if isinstance(answer, FailureAnswer):
            raise ConfigError(
                f"The probe could not run the running release's models against the "
                f"{self.target.conninfo.database} database: {answer.message}; report it with the project's migrations."
            )
        if not isinstance(answer, ProofAnswer):
            raise ConfigError(f"The probe answered a proof request with a {answer.kind}; reinstall dbpromote.")
        return answer

    def _answer(self, request: dict, *secrets: str) -> Answer:
        """The answer to one request line, its message's secrets masked; a ConfigError when the process gave none."""
        answer = self._ask(request, *secrets)
        return masked(answer, self.project, self.secrets, lambda: ending(self.process, self.stderr, self.secrets))

    def _ask(self, request: dict, *secrets: str) -> Answer | None:
        """The answer to one request line; None when the process ended or hung without one."""
        self.start()
        self.secrets += [secret for secret in secrets if secret not in self.secrets]
        try:
            self.process.stdin.write(json.dumps(request).encode() + b"\n")
            self.process.stdin.flush()
        except BrokenPipeError:
            pass  # it died; reported from what it wrote
        ready, _, _ = select.select([self.process.stdout], [], [], PROBE_TIMEOUT_S)
        return parse_answer(self.process.stdout.readline()) if ready else None

    def start(self) -> ProbeSession:
        """Its process started, unless it is: at the first request, or before, by a thread that outlives the
        threads that ask it (the kernel ends a probe with the thread that started it: dbpromote/lifeline.py)."""
        if self.process is None:
            self.process, self.secrets = start_probe(
                self.project,
                self.target,
                *self._serve_arguments(),
                application_name=self.application_name,
                stderr=self.stderr,
            )
        return self

    def _serve_arguments(self) -> list[str]:
        return [
            "serve",
            "--lock-timeout-ms",
            str(self.target.lock_timeout_ms),
            "--statement-timeout-ms",
            str(self.target.statement_timeout_ms),
        ]


class Rows(list):
    """A statement's rows, read as a cursor's are."""

    def fetchall(self) -> list:
        return list(self)

    def fetchone(self):
        return self[0] if self else None


class ProbeFailure(Exception):
    """A statement or the script failed in a fix session (the session ended, rolled back)."""

    def __init__(self, failure: FailureAnswer):
        super().__init__(failure.message)
        self.failure = failure


class ProbeTransaction:
    """One transaction on the project's own connection, in its interpreter, for a Python fix script: the worker
    sends the SQL it would run on its own connection (`execute`), asks for the script (`run_python`) and ends it
    (`commit` / `rollback`); used like a psycopg connection by dbpromote/fixes.py."""

    def __init__(self, project: DjangoProject, target: DatabaseTarget, source: str):
        self.script = tempfile.NamedTemporaryFile("w", suffix=".py", prefix="dbpromote-fix-")  # noqa: SIM115
        self.script.write(source)
        self.script.flush()
        self.stderr = tempfile.TemporaryFile()  # noqa: SIM115
        arguments = ["fix-session", "--script", self.script.name, "--lock-timeout-ms", str(target.lock_timeout_ms)]
        arguments += ["--statement-timeout-ms", str(target.statement_timeout_ms)]
        self.process, self.secrets = start_probe(project, target, *arguments, stderr=self.stderr)
        self.ended = False

    def __enter__(self) -> ProbeTransaction:
        return self

    def __exit__(self, *exc) -> None:
        if not self.ended:
            self.rollback()
        self.script.close()
        self.stderr.close()

    def execute(self, query, params=None) -> Rows:
        text = query if isinstance(query, str) else query.as_string()
        return Rows(self._request({"sql": text, "params": params}).rows)

    def run_python(self) -> None:
        self._request({"run": True})

    def commit(self) -> None:
        self._end("commit")

    def rollback(self) -> None:
        self._end("rollback")

    def _request(self, request: dict):
        self._send(request)
        answer = self._read()
        if isinstance(answer, FailureAnswer):
            self.ended = True
            self.process.wait(timeout=30)
            answer.message = redact(answer.message, *self.secrets)
            raise ProbeFailure(answer)
        return answer

    def _end(self, how: str) -> None:
        if self.ended:
            return
        self.ended = True
        self._send({"end": how})
        answer = self._read()
        self.process.wait(timeout=30)
        if how == "commit" and not isinstance(answer, StepAnswer):
            raise FixError(f"The fix session ended without committing ({answer}); nothing was committed: run it again.")

    def _send(self, request: dict) -> None:
        try:
            self.process.stdin.write(json.dumps(request).encode() + b"\n")
            self.process.stdin.flush()
        except BrokenPipeError:
            pass  # it died; the answer says how

    def _read(self):
        ready, _, _ = select.select([self.process.stdout], [], [], PROBE_TIMEOUT_S)
        answer = parse_answer(self.process.stdout.readline()) if ready else None
        if answer is None:
            self.ended = True
            why = ending(self.process, self.stderr, self.secrets)
            raise ProbeFailure(FailureAnswer(reason="error", message=f"the probe process gave no answer {why}"))
        return answer
