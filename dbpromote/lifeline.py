"""A child's lifeline to the worker process that started it (the probe, the backup stream, pg_dump and
pg_restore): it dies with it.

Standard library only: the probe loads this file by path in the project's own interpreter, and the backup stream
imports it without pulling in Prefect.
"""

from __future__ import annotations

import os
import shutil
import sys

# The worker's process id, given to a child it starts (the probe, the backup stream): see end_with_parent.
PARENT_PID = "DBPROMOTE_PARENT_PID"


def end_with_parent() -> None:
    """Have the kernel kill this process the moment the worker that started it dies (SIGKILL included).

    A probe that outlived its killed worker once committed a migration nobody was watching, and Prefect showed
    that task Running for ever; a child never acts for a dead run. Linux's PR_SET_PDEATHSIG; elsewhere a no-op.
    """
    if not sys.platform.startswith("linux") or PARENT_PID not in os.environ:
        return
    import ctypes
    import signal

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != int(os.environ[PARENT_PID]):  # it died before the request was made
        os._exit(1)


def tied(command: list[str]) -> list[str]:
    """The command, killed by the kernel the moment the thread that starts it dies (SIGKILL included): util-linux's
    `setpriv --pdeathsig KILL`, an exec wrapper, since Popen's preexec_fn is unsafe in a process with threads.

    pg_dump and pg_restore otherwise outlive a killed backup stream until their pipes break, which took more than
    5 s on a loaded machine (tests/test_crash_resume.py). Only for a child its starting thread waits for. As it is
    where there is no setpriv (not Linux).
    """
    setpriv = shutil.which("setpriv") if sys.platform.startswith("linux") else None
    return [setpriv, "--pdeathsig", "KILL", *command] if setpriv else command
