"""A child's lifeline to the worker process that started it (the probe, the backup stream): it dies with it.

Standard library only: the probe loads this file by path in the project's own interpreter, and the backup stream
imports it without pulling in Prefect.
"""

from __future__ import annotations

import os
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
