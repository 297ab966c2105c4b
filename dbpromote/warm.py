"""Flow runs started warm: a flow run's process forked from one that has Prefect and dbpromote's flows imported,
instead of a new interpreter importing them again.

Prefect's process worker starts each flow run as new interpreters (a workspace supervisor, then `python -m
prefect.engine` in its place), and each imports Prefect and the flows anew (1.0 s, then 1.7 s, on an idle
machine here): 2.7 s before a run's first task, twice in a promotion (its start and its resumption after the
approval), once in every lane of a fleet. A work pool whose command is `python -m dbpromote.warm` (the local
stack's; docs/own-prefect.md for a team's) runs this module's client instead, a process of a few milliseconds: it
hands its environment, working directory and standard streams to its worker's warm server over a private Unix
socket, the server forks a child that runs Prefect's engine as `python -m prefect.engine` would, and the client
passes the signals it gets on to the child and ends as the child ended. The worker sees one process, as before,
and cancels, streams and judges it as before.

Where there is no server yet, or it refuses (its modules changed on disk since it imported them), the client
becomes `python -m prefect.engine` itself (exec, the same process) and starts a server for the runs after it. A
server serves one worker (it ends with it, or after IDLE_S without a run) and one environment: a worker's runs
with other settings get a server of their own. The child dies the moment its client does (SIGKILL included), as
the run's process it stands for.

The `dbpromote` command starts the same way where it has no terminal (CI, scripts, automations: its own start,
1.2-1.7 s of importing Prefect and the CLI, was a fifth of the test suite's CPU): a server per environment, started
by the second command in a row that found none (a command typed once in some other environment starts nothing) and
ending after CLI_IDLE_S without a command. At a terminal the command runs as always: a hidden prompt (the one-time
code) needs the terminal as its controlling one, which a forked child cannot have.

Standard library only until the server imports what it keeps warm: the client must start in milliseconds.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import selectors
import shlex
import signal
import socket
import struct
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import NoReturn

# What a server imports before its first run: the engine and every flow a deployment names (module entrypoints);
# for the command, the CLI and what its commands import when they run.
PRELOAD = ("prefect.engine", "prefect.flow_engine", "prefect.task_engine", "dbpromote.flows", "setproctitle")
CLI_PRELOAD = ("dbpromote.cli", "dbpromote.runs", "prefect.client.orchestration", "setproctitle")
CLI = "cli"  # a server's owner: the command's, not a worker's

# A server with no run for this long ends (a worker's runs come every few seconds while it is busy); so does one
# whose worker has ended. It costs ~140 MB (its resident size here) while it lives.
IDLE_S = 600.0
# The command's: commands come in bursts (a script, a CI job, a person's few minutes at it).
CLI_IDLE_S = 300.0

# The variables Prefect's runner sets for one run (its id, its control channel, its deployment): not part of the
# environment a server is kept for.
PER_RUN_PREFIX = "PREFECT__"
# What a shell sets for each command it starts (the command's path, the working directory, its depth): not either.
PER_COMMAND = {"_", "PWD", "OLDPWD", "SHLVL"}

# Signals the client passes on to the child: the runner cancels with SIGTERM, a terminal with SIGINT.
RELAYED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)

_LENGTH = struct.Struct("!I")


def warm_command(python: str = sys.executable) -> str:
    """A work pool's command that starts its runs warm, with dbpromote and Prefect installed for `python`."""
    return shlex.join([python, "-m", "dbpromote.warm"])


def main() -> NoReturn:
    """The work pool's command: the run in a warm server's child when there is one, else as Prefect starts it."""
    path = server_path(os.environ, os.getppid())
    if path is not None:
        started = _start_warm(path)
        if started is not None:
            _relay(*started)
        _start_server(path, os.getppid())
    os.execv(sys.executable, [sys.executable, "-m", "prefect.engine"])


def cli() -> int:
    """The `dbpromote` command: in a warm server's child where it has no terminal and a server, else in-process."""
    path = None if _has_terminal() else server_path(os.environ, CLI)
    if path is not None:
        started = _start_warm(path)
        if started is not None:
            _relay(*started)
        seen, recent = path.with_suffix(".seen"), (time.time() - CLI_IDLE_S) * 1e9
        if _mtime(str(seen)) > recent:
            _start_server(path, CLI)
        else:  # the first command of an environment only marks it; the marks of others' long ago go
            for old in path.parent.glob("*.seen"):
                if _mtime(str(old)) < recent:
                    old.unlink(missing_ok=True)
            seen.touch(mode=0o600)
    from dbpromote.cli import main as command

    return command()


def _has_terminal() -> bool:
    try:
        os.close(os.open("/dev/tty", os.O_RDONLY | os.O_NOCTTY))
        return True
    except OSError:
        return False


def server_path(environ: Mapping[str, str], owner: int | str) -> Path | None:
    """The socket of the server for this owner (a worker's pid, or CLI) and environment, in a directory only this
    user can enter; None where there can be none (no pidfd: not Linux 5.3+; a directory someone else owns)."""
    if not hasattr(os, "pidfd_open"):
        return None
    home = Path(tempfile.gettempdir()) / f"dbpromote-warm-{os.getuid()}"
    try:
        home.mkdir(mode=0o700, exist_ok=True)
        owned = home.lstat()
    except OSError:
        return None
    if owned.st_uid != os.getuid() or owned.st_mode & 0o077 or not home.is_dir() or home.is_symlink():
        return None
    kept = sorted((k, v) for k, v in environ.items() if not k.startswith(PER_RUN_PREFIX) and k not in PER_COMMAND)
    key = hashlib.sha256(json.dumps([sys.executable, owner, kept]).encode()).hexdigest()[:24]
    return home / f"{key}.sock"


def _start_warm(path: Path) -> tuple[socket.socket, int] | None:
    """Hand this run to the server at path: the connection and the child's pid, or None where it cannot."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(str(path))
        if _peer_uid(conn) != os.getuid():
            raise OSError("the server is another user's")
        umask = os.umask(0o077)
        os.umask(umask)
        request = {"env": dict(os.environ), "cwd": os.getcwd(), "argv": sys.argv, "umask": umask}
        request = json.dumps(request).encode()
        socket.send_fds(conn, [_LENGTH.pack(len(request)) + request], [0, 1, 2])
        answer = _read_line(conn)
        return (conn, int(answer)) if answer.isdigit() else None
    except OSError:
        conn.close()
        return None


def _relay(conn: socket.socket, pid: int) -> NoReturn:
    """Pass this process's signals on to the child and end as it ended."""

    def pass_on(signum: int, _) -> None:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass  # it has ended: its status is on its way

    for signum in RELAYED:
        signal.signal(signum, pass_on)
    answer = _read_line(conn)
    if answer.lstrip("-").isdigit():
        code = int(answer)
    else:  # the server died: wait for the child itself, its status lost with the server
        _wait_gone(pid)
        code = 1
    if code < 0:  # killed by a signal: so is this process, for the worker to see the same
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    os._exit(code)


def _wait_gone(pid: int) -> None:
    try:
        with selectors.DefaultSelector() as selector:
            selector.register(os.pidfd_open(pid), selectors.EVENT_READ)
            selector.select()
    except ProcessLookupError:
        pass


def _start_server(path: Path, owner: int | str) -> None:
    """A server for the runs after this one, detached (its own session, no parent to wait for it)."""
    child = os.fork()
    if child == 0:
        try:
            os.setsid()
            if os.fork() == 0:
                devnull = os.open(os.devnull, os.O_RDWR)
                log = os.open(path.with_suffix(".log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
                os.dup2(devnull, 0)
                os.dup2(devnull, 1)
                os.dup2(log, 2)
                os.chdir("/")
                env = {k: v for k, v in os.environ.items() if not k.startswith(PER_RUN_PREFIX)}
                command = [sys.executable, "-m", "dbpromote.warm", "serve", str(path), str(owner)]
                os.execve(sys.executable, command, env)
        finally:
            os._exit(0)
    os.waitpid(child, 0)


def _peer_uid(conn: socket.socket) -> int:
    _, uid, _ = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
    return uid


def _read_line(conn: socket.socket) -> str:
    """One line from conn ("" at its end), read a byte at a time so that nothing after it is taken."""
    line = bytearray()
    while not line.endswith(b"\n"):
        byte = conn.recv(1)
        if not byte:
            break
        line += byte
    return line.decode().strip()


class Run(Exception):  # noqa: N818 (not an error: how a forked child leaves the server's loop)
    """Raised in a forked child to leave the server's frames: the run starts from the module's top level."""

    def __init__(self, conn: socket.socket, request: dict, fds: list[int], owner: int | str):
        super().__init__("a forked flow run")
        self.conn, self.request, self.fds, self.owner = conn, request, fds, owner

    def start(self) -> None:
        """Become the client's process, then run Prefect's engine as `python -m prefect.engine` does, or the
        command as `dbpromote` does."""
        import runpy

        import setproctitle

        # What `ps` shows, and what finds the run's process: its environment in /proc is still the server's. First,
        # while the C environment is the server's own (setproctitle finds the space for a title next to it).
        run_id = self.request["env"].get("PREFECT__FLOW_RUN_ID", "")
        engine = f"{sys.executable} -m prefect.engine {run_id}"
        setproctitle.setproctitle(
            f"{shlex.join(self.request['argv']) if self.owner == CLI else engine} (warm: dbpromote.warm)"
        )
        os.setsid()  # the client's process group is the run's: the client passes its signals on
        for target, fd in enumerate(self.fds):
            os.dup2(fd, target)
            os.close(fd)
        os.environ.clear()
        os.environ.update(self.request["env"])
        os.chdir(self.request["cwd"])
        os.umask(self.request["umask"])
        threading.Thread(target=self._end_with_client, daemon=True, name="dbpromote-warm-client").start()
        from prefect.context import refresh_global_settings_context

        refresh_global_settings_context()
        if self.owner == CLI:
            from dbpromote.cli import main as command

            sys.argv[:] = self.request["argv"]
            sys.path[0] = os.path.dirname(sys.argv[0])  # as for the console script
            try:
                code = command()
            except SystemExit as done:
                code = done.code
            _end(code)
        sys.path[0] = self.request["cwd"]
        sys.argv[1:] = []  # the engine takes an argument for the run's id: the server's are not
        try:
            runpy.run_module("prefect.engine", run_name="__main__", alter_sys=True)
        except SystemExit as done:
            _end(done.code)
        _end(0)

    def _end_with_client(self) -> None:
        """The client sends nothing after its request: its connection's end is its death, and so this run's."""
        self.conn.settimeout(None)
        while self.conn.recv(1):
            pass
        os.kill(os.getpid(), signal.SIGKILL)


class Server:
    """Keeps Prefect and the flows imported and forks a run's process for each client, until idle or orphaned."""

    def __init__(self, path: Path, owner: int | str):
        self.path, self.owner = path, owner
        self.selector = selectors.DefaultSelector()
        self.children: dict[int, tuple[int, socket.socket]] = {}  # by pidfd: pid, client's connection
        self.listener: socket.socket | None = None
        self.lock: int | None = None  # held while this server may bind the socket
        self.files: dict[str, int] = {}

    def serve(self) -> None:
        """Import, listen, and fork runs until the worker ends or no run came for IDLE_S; then wait for the runs."""
        import fcntl
        import importlib
        import pkgutil

        self.lock = os.open(self.path.with_suffix(".lock"), os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self.lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return  # another client started this server a moment before
        for name in CLI_PRELOAD if self.owner == CLI else PRELOAD:
            module = importlib.import_module(name)
            for sub in pkgutil.iter_modules(getattr(module, "__path__", []), f"{name}."):
                importlib.import_module(sub.name)
        self.files = self._module_files()
        self.path.unlink(missing_ok=True)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(self.path))
        self.listener.listen(16)
        self.selector.register(self.listener, selectors.EVENT_READ, self._accept)
        if self.owner != CLI:
            self.selector.register(os.pidfd_open(self.owner), selectors.EVENT_READ, self._orphaned)
        idle_s, idle_since = CLI_IDLE_S if self.owner == CLI else IDLE_S, time.monotonic()
        while self.listener or self.children:
            for key, _ in self.selector.select(timeout=60):
                key.data(key.fileobj)
            if self.children:
                idle_since = time.monotonic()
            elif self.listener and time.monotonic() - idle_since > idle_s:
                self._stop()

    def _accept(self, listener: socket.socket) -> None:
        """A client's run: forked, or refused when the server should not serve it (then it starts cold)."""
        conn, _ = listener.accept()
        conn.settimeout(10)
        try:
            request, fds = self._receive(conn)
        except (OSError, ValueError):
            conn.close()
            return
        if _peer_uid(conn) != os.getuid() or self._stale():
            self._refuse(conn, fds)
            return
        pid = os.fork()
        if pid == 0:
            self._leave_server(conn)
            raise Run(conn, request, fds, self.owner)
        for fd in fds:
            os.close(fd)
        conn.sendall(f"{pid}\n".encode())
        pidfd = os.pidfd_open(pid)
        self.children[pidfd] = (pid, conn)
        self.selector.register(pidfd, selectors.EVENT_READ, self._ended)

    def _receive(self, conn: socket.socket) -> tuple[dict, list[int]]:
        """The client's request (its environment and working directory) and its three standard streams."""
        data, fds, _, _ = socket.recv_fds(conn, 65536, 3)
        if len(fds) != 3 or len(data) < _LENGTH.size:
            for fd in fds:
                os.close(fd)
            raise ValueError("not a run's request")
        (length,) = _LENGTH.unpack_from(data)
        data = data[_LENGTH.size :]
        while len(data) < length:
            more = conn.recv(length - len(data))
            if not more:
                raise ValueError("the request ended early")
            data += more
        return json.loads(data), fds

    def _refuse(self, conn: socket.socket, fds: list[int]) -> None:
        self._stop()  # first: the client starts a server with what is on disk now, which needs the lock
        for fd in fds:
            os.close(fd)
        conn.sendall(b"refused\n")
        conn.close()

    def _ended(self, pidfd: int) -> None:
        """A child ended: its client is told how, to end the same way."""
        pid, conn = self.children.pop(pidfd)
        self.selector.unregister(pidfd)
        os.close(pidfd)
        _, status = os.waitpid(pid, 0)
        try:
            conn.sendall(f"{os.waitstatus_to_exitcode(status)}\n".encode())
        except OSError:
            pass  # its client is gone (killed): nobody to tell
        conn.close()

    def _orphaned(self, pidfd: int) -> None:
        self.selector.unregister(pidfd)
        os.close(pidfd)
        self._stop()

    def _stop(self) -> None:
        """No more runs: the socket goes, the runs already started go on."""
        if self.listener is None:
            return
        self.selector.unregister(self.listener)
        self.listener.close()
        self.listener = None
        # Still this server's (no other binds it while the lock is held); then a new server may start while this
        # one's runs finish. An empty log goes too: one is kept only for what went wrong.
        for path in (self.path, self.path.with_suffix(".lock")):
            path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            if self.path.with_suffix(".log").stat().st_size == 0:
                self.path.with_suffix(".log").unlink()
        os.close(self.lock)
        self.lock = None

    def _leave_server(self, conn: socket.socket) -> None:
        """In a forked child: nothing of the server's kept but the client's connection."""
        for key in list(self.selector.get_map().values()):
            fileobj = key.fileobj
            fileobj.close() if isinstance(fileobj, socket.socket) else os.close(fileobj)
        for _, other in self.children.values():
            other.close()
        self.selector.close()
        if self.lock is not None:
            os.close(self.lock)
        for signum in RELAYED:
            signal.signal(signum, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def _stale(self) -> bool:
        """A module imported changed on disk since (an upgrade, an edit): a run must not run the old code."""
        return any(_mtime(path) != mtime for path, mtime in self.files.items())

    @staticmethod
    def _module_files() -> dict[str, int]:
        paths = (getattr(module, "__file__", None) for module in list(sys.modules.values()))
        return {path: _mtime(path) for path in paths if path}


def _end(code: int | str | None) -> NoReturn:
    """End as the interpreter does on SystemExit(code) (its threads joined, atexit's functions run, its streams
    flushed), but without tearing down the 1,500 modules the server imported: 0.4 s of a warm `dbpromote --help`'s
    0.5 s, and as long at the end of every run. An error other than SystemExit ends the interpreter's way."""
    import atexit

    if code is not None and not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    threading._shutdown()  # type: ignore[attr-defined]  # noqa: SLF001 (what the interpreter's exit does first)
    atexit._run_exitfuncs()  # noqa: SLF001
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code or 0)


def _mtime(path: str) -> int:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return -1


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        try:
            owner = sys.argv[3]
            Server(Path(sys.argv[2]), int(owner) if owner.isdigit() else owner).serve()
        except Run as run:
            run.start()
    else:
        main()
