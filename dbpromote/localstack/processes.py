"""The local stack's processes: free ports, spawning, waiting for health, and stopping exactly what was started."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import httpx

from dbpromote.errors import StackError
from dbpromote.localstack.state import PREFERRED_PORTS, SERVERS, Stack, process_alive


def free_port(preferred: int, taken: set[int] = frozenset()) -> int:
    """The preferred port if nothing listens there, else the next free one (loopback only)."""
    for port in range(preferred, preferred + 100):
        if port in taken:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise StackError(f"No free port in {preferred}-{preferred + 99} on 127.0.0.1; stop what holds them.")


def pick_port(stack: Stack, component: str) -> int:
    """A port for the component: DBPROMOTE_PORT_<COMPONENT> or its preferred one, unless taken."""
    taken = {port for name, port in stack.ports.items() if name != component}
    preferred = int(os.environ.get(f"DBPROMOTE_PORT_{component.upper()}", PREFERRED_PORTS[component]))
    stack.ports[component] = free_port(preferred, taken)
    return stack.ports[component]


def spawn(stack: Stack, component: str, command: list[str], env: dict[str, str], cwd: Path) -> None:
    """Start a long-running component in a session of its own, logging to STATE/<component>.log; record it."""
    log = open(stack.home / f"{component}.log", "ab")
    os.fchmod(log.fileno(), 0o600)  # what a component says is its owner's to read
    process = subprocess.Popen(
        command,
        env=os.environ | env,
        cwd=cwd,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    log.close()
    stack.pids[component] = process.pid
    stack.commands[component] = command[1:]
    stack.save()


def wait_until(check: Callable[[], bool], what: str, log: Path, timeout: float = 90) -> None:
    """Poll `check` until it holds; a StackError with the log's tail when it does not within `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (httpx.HTTPError, OSError):
            pass
        time.sleep(0.3)
    tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
    raise StackError(f"{what} did not become healthy within {timeout:.0f} s; see {log}.\n{tail}")


def venv_script(name: str) -> str:
    """A console script installed beside this interpreter (prefect, gcp-storage-emulator)."""
    return str(Path(sys.executable).parent / name)


def run(command: list[str], what: str, **kwargs) -> None:
    """Run a command to completion; a StackError with its output when it fails."""
    result = subprocess.run(command, capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        raise StackError(f"{what} failed (exit {result.returncode}): {result.stderr.strip() or result.stdout.strip()}")


def stop(stack: Stack, components: Iterable[str]) -> list[str]:
    """Stop the recorded components that are still ours and running; the names of those stopped."""
    stopped = []
    for component in components:
        if stack.running(component):
            _stop_one(stack.pids[component], postgres=component in SERVERS)
            stopped.append(component)
        stack.pids.pop(component, None)
    if stack.home.is_dir():
        stack.save()
    return stopped


def _stop_one(pid: int, *, postgres: bool) -> None:
    """Politely first (PostgreSQL's fast shutdown, SIGTERM to a process group), then firmly."""
    if postgres:
        os.kill(pid, signal.SIGINT)
    else:
        os.killpg(pid, signal.SIGTERM)
    if not _wait_gone(pid, 30):
        if postgres:
            os.kill(pid, signal.SIGQUIT)  # PostgreSQL's immediate shutdown
        else:
            os.killpg(pid, signal.SIGKILL)
        _wait_gone(pid, 10)


def _wait_gone(pid: int, timeout: float) -> bool:
    """Wait until the process and everything in its process group (its children) has exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        if not _live_group_members(pid):
            return True
        time.sleep(0.1)
    return False


def _live_group_members(pgid: int) -> list[int]:
    members = []
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(") ", 1)[1].split()
        except (OSError, IndexError):
            continue
        process_id = int(stat_file.parent.name)
        if fields[0] != "Z" and (int(fields[2]) == pgid or process_id == pgid):
            members.append(process_id)
    return members


def clear_stale_lock_files(*locks: Path) -> None:
    """After a crash, the lock files of a dead process (or of a zombie nobody reaped) block the next start."""
    for lock in locks:
        try:
            pid = int(lock.read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            continue
        if not process_alive(pid):
            lock.unlink(missing_ok=True)
