"""A child the worker starts (the probe, the backup stream) dies with the worker, SIGKILL included."""

import os
import signal
import subprocess
import sys
import time

import pytest

from dbpromote.lifeline import PARENT_PID

CHILD = "from dbpromote.lifeline import end_with_parent; end_with_parent(); print('ready', flush=True); " + (
    "import time; time.sleep(120)"
)
PARENT = f"""
import os, subprocess, sys, time
child = subprocess.Popen([sys.executable, '-c', {CHILD!r}], env=os.environ | {{{PARENT_PID!r}: str(os.getpid())}},
                         stdout=subprocess.PIPE, text=True)
child.stdout.readline()
print(child.pid, flush=True)
time.sleep(120)
"""


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_child_is_killed_when_its_parent_is_killed():
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    assert alive(child)
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 5
    while alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(child)


def test_a_child_whose_parent_died_before_it_started_watching_ends_at_once():
    env = os.environ | {PARENT_PID: "1"}  # not its parent: as if the real one had died and it was adopted
    finished = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=30)
    assert finished.returncode == 1 and "ready" not in finished.stdout
