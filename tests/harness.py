"""What several test modules share: the sample release, how to read a database's migrations, flows run in the
background while the test acts as the approver, and a session holding a lock."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg

from dbpromote import localstack as local_stack
from dbpromote.models.backup import Backup

RELEASE = [
    "core.0002_featureflag",
    "core.0003_task_priority",
    "core.0004_task_tenant_created_idx",
    "core.0005_project_slug",
    "core.0006_rename_milestone_due",
    "core.0007_remove_invoice_legacy_reference",
    "core.0008_default_task_statuses",
]


def applied(stack, server):
    with psycopg.connect(stack.database_url(server)) as conn:
        return [f"{a}.{n}" for a, n in conn.execute("SELECT app, name FROM django_migrations ORDER BY id")]


class InBackground:
    """Runs a flow in a thread of this process, as a worker would, so the test can act as the approver."""

    def __init__(self, flow, **parameters):
        from dbpromote.runs import pending_approvals

        self.already_paused = {run.id for run in pending_approvals()}
        self.result, self.error = None, None

        def run():
            try:
                self.result = flow(**parameters)
            except BaseException as error:  # handed to the test
                self.error = error

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def paused_run(self, timeout=120):
        from dbpromote.runs import pending_approvals

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.thread.is_alive(), f"the flow ended without pausing: {self.error}"
            runs = [run for run in pending_approvals() if run.id not in self.already_paused]
            if runs:
                return runs[-1]
            time.sleep(0.5)
        raise AssertionError("no run paused for approval")

    def finish(self, timeout=180):
        self.thread.join(timeout)
        assert not self.thread.is_alive()
        return self.result


@contextlib.contextmanager
def target_changed(name: str, **fields):
    """A target saved with other settings (say drift="warn") for the length of a block, then as it was."""
    from dbpromote.config import DatabaseTarget

    saved = DatabaseTarget.load(name)
    saved.model_copy(update=fields).save(name, overwrite=True)
    try:
        yield
    finally:
        saved.save(name, overwrite=True)


def approval_form_text(run) -> str:
    """The markdown a paused run's approval form shows above its fields."""
    from prefect import get_client
    from prefect.input.run_input import keyset_from_paused_state

    with get_client(sync_client=True) as client:
        paused = client.read_flow_run(run.id)
        return json.loads(client.read_flow_run_input(run.id, keyset_from_paused_state(paused.state)["description"]))


class PromotionInBackground(InBackground):
    def __init__(self, **parameters):
        from dbpromote.flows.promote import promote

        defaults = {"project": "tenant-backend", "through": ["staging", "production"], "approval_poll_s": 1}
        super().__init__(promote, **(defaults | parameters))


def hold_lock(
    url: str, table: str, seconds: float, ready: threading.Event, after_a_wait: bool = False, mode: str = "ACCESS SHARE"
) -> threading.Thread:
    """A session holding a lock on table (ACCESS SHARE: a reader's) for `seconds` (after_a_wait: counted from the
    moment another session first waits for it, so that whatever comes is refused at least once however slow)."""

    def waited_for(conn) -> bool:
        return conn.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE relation = %s::regclass AND NOT granted)", [table]
        ).fetchone()[0]

    def hold():
        # A blocker outliving its test is ended when the next test resets the database: that is fine.
        with contextlib.suppress(psycopg.errors.AdminShutdown), psycopg.connect(url) as conn:
            conn.execute(f"LOCK TABLE {table} IN {mode} MODE")
            ready.set()
            deadline = time.monotonic() + 120
            with psycopg.connect(url, autocommit=True) as watcher:
                while after_a_wait and not waited_for(watcher) and time.monotonic() < deadline:
                    time.sleep(0.02)
            time.sleep(seconds)

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    ready.wait(10)
    return thread


def a_backup(object_name: str = "backups/staging/db/1.dump.zst", created_at: str = "2026-01-01T00:00:00+00:00"):
    """A verified backup as the bucket would list it, for logic that only reads its fields."""
    return Backup(
        uri=f"gs://bucket/{object_name}",
        bucket="bucket",
        object_name=object_name,
        environment="staging",
        database="db",
        server_version="15.0",
        size_bytes=1,
        crc32c="AAAAAA==",
        duration_s=0.1,
        created_at=created_at,
        flow_run_id="",
        migration_state=[("core", "0001_initial")],
    )


def wait_for_run(run_id, timeout_s: float = 600):
    """A flow run's state once it is final."""
    from dbpromote.runs import wait_for

    state = wait_for(run_id, timeout_s=timeout_s).state
    assert state and state.is_final(), f"run {run_id} did not end within {timeout_s:.0f} s"
    return state


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """The `dbpromote` command as a user types it, in this session's environment (its stack)."""
    command = [str(Path(sys.executable).parent / "dbpromote"), *args]
    return subprocess.run(command, capture_output=True, text=True, env=os.environ | (env or {}))


def started(*args: str) -> str:
    """The run's id of a command that starts one (`backup staging`, `promote ...`), typed as a user does."""
    typed = cli(*args)
    assert typed.returncode == 0, typed.stderr
    return typed.stdout.split()[0]


def fleet_databases(stack, count: int, prefix: str = "shard", **fields) -> list[str]:
    """Production reset to v1 and `count` copies of it registered as targets (the stack's fleet, see there)."""
    from dbpromote import localstack as local_stack

    local_stack.reset_database(stack, "production")
    return local_stack.fleet(stack, count, prefix, **fields)


def run_processes(run_id: str) -> dict[int, str]:
    """The live processes of a flow run (its engine and the children it started), by pid: their command lines. A
    warm-started engine (dbpromote/warm.py) is found by its title: its environment in /proc is its server's."""
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            ours = f"PREFECT__FLOW_RUN_ID={run_id}".encode() in (proc / "environ").read_bytes().split(b"\0")
            ours = ours or f"prefect.engine {run_id} " in command
            if ours and (proc / "stat").read_text().split(") ")[1][0] != "Z":
                found[int(proc.name)] = command
    return found


def kill(stack, run_id: str, worker: bool) -> None:
    """SIGKILL the run's flow process (and the worker): what started from it must end with it, at once."""
    before = run_processes(run_id)
    (engine,) = [pid for pid, command in before.items() if "prefect.engine" in command]
    if worker:
        os.kill(local_stack.Stack.load(stack.home).pids["worker"], signal.SIGKILL)
    os.kill(engine, signal.SIGKILL)
    # The kernel kills the probe, the backup stream and its pg_dump and pg_restore with it (PR_SET_PDEATHSIG). What
    # Prefect's worker starts for the run afterwards (its crash-hook process, with the run's id in its environment)
    # is not the dead process's: only the processes alive at the kill are judged.
    deadline = time.monotonic() + 15

    def left() -> dict[int, str]:
        return {pid: command for pid, command in run_processes(run_id).items() if pid in before}

    while left() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert left() == {}, f"a probe or backup stream outlived the killed flow process: {left()}"
    if worker:
        local_stack.up(stack.home, deploy=False)  # a new worker, as after a machine is replaced


def crashed(run_id: str, timeout_s: float = 180):
    """The run's state once Prefect marked it Crashed (with the worker dead: the heartbeat automation, <= 2 min)."""
    state = wait_for_run(run_id, timeout_s)
    assert state.is_crashed(), state
    return state


def wait_until(condition, what: str, timeout_s: float = 120, poll_s: float = 0.2) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout_s} s"
        time.sleep(poll_s)


def waits_for_a_lock(stack, server: str) -> bool:
    """A session of the migration role is waiting for a lock on the server (a migration retries with lock_timeout,
    so it waits again within seconds)."""
    with psycopg.connect(stack.database_url(server)) as conn:
        query = "SELECT count(*) FROM pg_stat_activity WHERE usename = current_user AND wait_event_type = 'Lock'"
        return conn.execute(query).fetchone()[0] > 0


@contextlib.contextmanager
def table_locked(url: str, table: str):
    """A session reading a table: a migration that alters it waits for its lock (and retries) until released."""
    with psycopg.connect(url) as conn:
        conn.execute(f"LOCK TABLE {table} IN ACCESS SHARE MODE")
        yield
        conn.rollback()


def ci_check(stack, server: str, *options: str):
    """`dbpromote check` as a CI job runs it: the project's folder, the database URL in the environment, and no
    Prefect server anywhere (the API URL points at a closed port)."""
    env = {
        "DBPROMOTE_DATABASE_URL": stack.database_url(server),
        "PREFECT_API_URL": "http://127.0.0.1:9/api",
        "PREFECT_API_AUTH_STRING": "",
    }
    project = str(local_stack.SAMPLE_PROJECT)
    args = ["check", "--project", project, "--settings", "tenant_backend.settings", "--against", server, *options]
    return cli(*args, env=env)
