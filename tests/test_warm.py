"""Runs started warm (dbpromote/warm.py): the stack's pool starts each run's process as a fork of its worker's warm
server. The run is the same run: it completes, it dies with the process its worker started, it is cancelled
through it, and code changed on disk is never run old."""

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import dbpromote.flows.backup

from dbpromote import localstack as local_stack
from tests.harness import (
    cli,
    crashed,
    run_processes,
    started,
    table_locked,
    wait_for_run,
    wait_until,
    waits_for_a_lock,
)
from tests.test_crash_resume import PROMOTE, bulky, uploading


def command_of(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()[1])


def warm_server_ready(stack) -> None:
    """The stack's worker has its warm server listening (a worker's first run starts it and runs cold)."""
    worker = local_stack.Stack.load(stack.home).pids["worker"]

    def listening() -> bool:
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                command = cmdline.read_bytes().split(b"\0")
            except OSError:
                continue
            if command[1:4] == [b"-m", b"dbpromote.warm", b"serve"] and command[5:6] == [str(worker).encode()]:
                return Path(command[4].decode()).exists()
        return False

    if not listening():
        wait_for_run(started("backup", "staging"))
    wait_until(listening, "the worker's warm server to listen")


def engine_of(run_id: str) -> tuple[int, str]:
    """The run's engine process, once it runs: its pid and command line."""
    found = {}

    def running() -> bool:
        found.update((pid, c) for pid, c in run_processes(run_id).items() if "prefect.engine" in c)
        return bool(found)

    wait_until(running, "the run's engine to start", poll_s=0.02)
    return next(iter(found.items()))


def test_a_run_is_forked_from_its_workers_warm_server_and_completes_as_a_cold_one(fresh_databases):
    stack = fresh_databases
    warm_server_ready(stack)
    run_id = started("backup", "staging")
    pid, command = engine_of(run_id)
    assert f"prefect.engine {run_id} (warm: dbpromote.warm)" in command
    assert "-m dbpromote.warm serve" in command_of(parent_of(pid))
    assert wait_for_run(run_id).is_completed()
    wait_until(lambda: run_processes(run_id) == {}, "the run's processes to end", timeout_s=30)


def test_a_warm_run_dies_at_once_with_the_process_its_worker_started(fresh_databases):
    """The worker's own child (the client: what Prefect knows as the run's process) SIGKILLed mid-backup, as when
    its machine dies: the forked engine, its backup stream and pg_dump end with it, and the run is Crashed."""
    stack = fresh_databases
    warm_server_ready(stack)
    with bulky(stack, "staging"):
        run_id = started("backup", "staging")
        wait_until(lambda: uploading(run_id), "the backup's upload", poll_s=0.05)
        before = run_processes(run_id)
        (client,) = [pid for pid, command in before.items() if command.split()[1:3] == ["-m", "dbpromote.warm"]]
        assert any("(warm: dbpromote.warm)" in command for command in before.values())
        os.kill(client, signal.SIGKILL)
        left = lambda: set(run_processes(run_id)) & set(before)  # noqa: E731
        wait_until(lambda: not left(), "the run's processes to end with its client", timeout_s=15, poll_s=0.1)
        crashed(run_id)


def test_a_warm_run_is_cancelled_through_the_process_its_worker_started(fresh_databases):
    """`dbpromote cancel` of a promotion whose migration waits for a lock: the worker signals its child, which
    passes it on to the engine; the run is Cancelled and its processes end."""
    stack = fresh_databases
    warm_server_ready(stack)
    with table_locked(stack.database_url("staging"), "core_task"):
        run_id = started(*PROMOTE)
        wait_until(lambda: waits_for_a_lock(stack, "staging"), "a staging migration to wait for its lock")
        assert any("(warm: dbpromote.warm)" in command for command in run_processes(run_id).values())
        cancelled = cli("cancel", run_id, "--reason", "a warm run cancelled")
        assert cancelled.returncode == 0, cancelled.stderr
        assert wait_for_run(run_id).is_cancelled()
        wait_until(lambda: run_processes(run_id) == {}, "the cancelled run's processes to end", timeout_s=30)


def test_code_changed_on_disk_is_never_run_old(fresh_databases):
    """A module the server imported changed since (an upgrade, an edit): the next run starts cold, with the code on
    disk, and a new server takes over for the runs after it."""
    stack = fresh_databases
    warm_server_ready(stack)
    module = Path(dbpromote.flows.backup.__file__)
    os.utime(module)  # as an edit saved leaves it, to the nanosecond
    run_id = started("backup", "staging")
    _, command = engine_of(run_id)
    assert "(warm" not in command and command.split()[1:3] == ["-m", "prefect.engine"]
    assert wait_for_run(run_id).is_completed()
    warm_server_ready(stack)
    _, command = engine_of(again := started("backup", "staging"))
    assert "(warm: dbpromote.warm)" in command
    assert wait_for_run(again).is_completed()


def test_a_command_without_a_terminal_runs_in_a_fork_of_its_warm_server_as_it_would_cold(fresh_databases, tmp_path):
    """`dbpromote` in a script (no terminal, as here): the first command of an environment runs cold, the second
    starts the command's warm server, those after run in a fork of it with their own arguments, environment,
    working directory and streams, and end as a cold one does: the same output, the same exit code."""
    from dbpromote import warm

    env = os.environ | {"DBPROMOTE_TEST_ENVIRONMENT": tmp_path.name}  # its own: a server of its own
    dbpromote = str(Path(sys.executable).parent / "dbpromote")
    server = warm.server_path(env, warm.CLI)
    (tmp_path / "fix.sql").write_text("")  # found from the command's working directory, and refused
    fix = [dbpromote, "fix", "--project", "tenant-backend", "--through", "staging", "--script", "fix.sql"]

    def typed() -> tuple[int, str, str]:
        done = subprocess.run(fix, capture_output=True, text=True, env=env, cwd=tmp_path, start_new_session=True)
        return done.returncode, done.stdout, done.stderr

    cold = typed()
    assert cold[0] == 1 and "The fix script is empty" in cold[2], cold
    assert not server.exists()  # the first command of an environment only marks it
    assert typed() == cold  # the second starts its server
    wait_until(server.exists, "the command's warm server to listen")
    assert typed() == cold

    promote = [dbpromote, "promote", "--project", "tenant-backend", "--through", "staging", "--wait"]
    # Its own session, as `typed`: no terminal even where the suite runs at one.
    waiting = subprocess.Popen(
        promote, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True
    )
    run_id = waiting.stdout.readline().split()[0]
    title = f"{' '.join(promote)} (warm: dbpromote.warm)"
    forks = [pid for pid, command in processes().items() if command.strip() == title]
    assert len(forks) == 1 and f"serve {server} cli" in command_of(parent_of(forks[0])), processes()
    out, err = waiting.communicate(timeout=300)
    assert waiting.returncode == 0 and out.splitlines()[-1] == "finished: Completed", out + err
    assert wait_for_run(run_id).is_completed()


def processes() -> dict[int, str]:
    """Every process's command line (its title), by pid."""
    found = {}
    for pid in Path("/proc").iterdir():
        if pid.name.isdigit():
            with contextlib.suppress(OSError):
                found[int(pid.name)] = command_of(int(pid.name))
    return found
