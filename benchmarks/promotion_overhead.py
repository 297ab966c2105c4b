"""Benchmark: the sample release promoted over staging and production (approval given at once) against the bare
commands it replaces run by hand on identical databases: pg_dump, migrate, showmigrations per environment.

Usage: .venv/bin/python benchmarks/promotion_overhead.py   (local stack up first; resets both databases)
Goal: <= 1.5x the bare commands' wall time.
"""

import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from deployments import stack as local_stack  # noqa: E402

stack = local_stack.Stack.load()
os.environ.update(stack.client_env())


def bare() -> float:
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as folder:
        for server in local_stack.SERVERS:
            url = stack.database_url(server)
            subprocess.run(["pg_dump", "-Fc", "-f", f"{folder}/{server}.dump", url], check=True)
            env = os.environ | {"DATABASE_URL": url}
            for command in (["migrate"], ["showmigrations", "core"]):
                subprocess.run(
                    [sys.executable, "manage.py", *command],
                    cwd=local_stack.SAMPLE_PROJECT,
                    env=env,
                    check=True,
                    stdout=subprocess.DEVNULL,
                )
    return time.monotonic() - started


def ours() -> float:
    from deployments.runs import answer_approval, pending_approvals
    from flows.promote import promote

    already_paused = {run.id for run in pending_approvals()}

    def approve_when_paused():
        while True:
            runs = [run for run in pending_approvals() if run.id not in already_paused]
            if runs:
                answer_approval(str(runs[-1].id), "approve", "benchmark", "", acknowledge_risks=True)
                return
            time.sleep(0.2)

    approver = threading.Thread(target=approve_when_paused, daemon=True)
    approver.start()
    started = time.monotonic()
    promote("tenant-backend", ["staging", "production"], approval_poll_s=1)
    return time.monotonic() - started


def main() -> None:
    for server in local_stack.SERVERS:
        local_stack.reset_database(stack, server)
    bare_s = bare()
    for server in local_stack.SERVERS:
        local_stack.reset_database(stack, server)
    ours_s = ours()
    print(f"bare pg_dump + migrate + showmigrations x2  {bare_s:6.1f} s  (baseline)")
    print(
        f"dbpromote promote (approval given at once)  {ours_s:6.1f} s  {ours_s / bare_s:5.2f}x baseline (goal <= 1.5)"
    )


if __name__ == "__main__":
    main()
