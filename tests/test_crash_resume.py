"""The kill matrix: a promotion's flow-run process (and in two cases its worker too) killed with SIGKILL, as when a
machine dies, at four points; each time Prefect marks the run Crashed by itself, nothing the dead process started
goes on, and one command carries the promotion to the state a clean one gives, nothing done twice (promise 7)."""

import contextlib
import os
import signal
import time
from pathlib import Path

import psycopg
import pytest

from dbpromote import localstack as local_stack
from tests.harness import RELEASE, PromotionInBackground, applied, cli, wait_for_run
from tests.test_promote import catalog_snapshot

PROMOTE = ["promote", "--project", "tenant-backend", "--through", "staging,production"]


@pytest.fixture(scope="module")
def clean_head(stack):
    """Production's schema after a clean promotion of the release: what every recovered promotion must give."""
    from dbpromote.runs import answer_approval
    from tests.conftest import cancel_unfinished_runs

    cancel_unfinished_runs()  # what an earlier module left paused would hold the targets
    for server in local_stack.SERVERS:
        local_stack.reset_database(stack, server)
    promotion = PromotionInBackground()
    answer_approval(str(promotion.paused_run().id), "approve", "alice", "reference", acknowledge_risks=True)
    promotion.finish()
    assert promotion.error is None, promotion.error
    return catalog_snapshot(stack, "production")[0]


def run_processes(run_id: str) -> dict[int, str]:
    """The live processes of a flow run (its engine and the children it started), by pid: their command lines."""
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if f"PREFECT__FLOW_RUN_ID={run_id}".encode() in (proc / "environ").read_bytes().split(b"\0"):
                if (proc / "stat").read_text().split(") ")[1][0] != "Z":
                    found[int(proc.name)] = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    return found


def kill(stack, run_id: str, worker: bool) -> None:
    """SIGKILL the run's flow process (and the worker): what started from it must end with it, at once."""
    (engine,) = [pid for pid, command in run_processes(run_id).items() if "prefect.engine" in command]
    if worker:
        os.kill(local_stack.Stack.load(stack.home).pids["worker"], signal.SIGKILL)
    os.kill(engine, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while run_processes(run_id) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert run_processes(run_id) == {}, "a probe or backup stream outlived the killed flow process"
    if worker:
        local_stack.up(stack.home, deploy=False)  # a new worker, as after a machine is replaced


def crashed(run_id: str, timeout_s: float = 180):
    """The run's state once Prefect marked it Crashed (with the worker dead: the heartbeat automation, <= 2 min)."""
    state = wait_for_run(run_id, timeout_s)
    assert state.is_crashed(), state
    return state


def started(*args: str) -> str:
    result = cli(*args)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()[0]


def approved(run_id: str) -> None:
    result = cli("approve", run_id, "--approver", "alice", "--comment", "after the crash", "--acknowledge-risks")
    assert result.returncode == 0, result.stderr


def wait_until(condition, what: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout_s} s"
        time.sleep(0.2)


@contextlib.contextmanager
def table_locked(url: str, table: str):
    """A session reading a table: a migration that alters it waits for its lock (and retries) until released."""
    with psycopg.connect(url) as conn:
        conn.execute(f"LOCK TABLE {table} IN ACCESS SHARE MODE")
        yield
        conn.rollback()


def assert_recovered(stack, clean_head: str, crashed_id: str, final_id: str) -> None:
    """The state a clean promotion gives, no migration twice, nothing left running, one promotion, one approval."""
    from prefect import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterParentFlowRunId,
        TaskRunFilter,
        TaskRunFilterFlowRunId,
    )

    from dbpromote.config import load_target
    from dbpromote.records import read_records
    from dbpromote.runs import NOT_FINAL, flow_runs

    assert wait_for_run(final_id).is_completed()
    for server in local_stack.SERVERS:
        assert applied(stack, server) == ["core.0001_initial", *RELEASE]  # each once, in order
    assert catalog_snapshot(stack, "production")[0] == clean_head
    assert catalog_snapshot(stack, "staging")[0] == clean_head
    assert [run.id for run, flow in flow_runs(NOT_FINAL) if flow == "promote"] == []

    def left_running() -> list[str]:
        """The crashed run's subflows and task runs that are not final."""
        with get_client(sync_client=True) as client:
            children = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[crashed_id]))
            )
            runs = [crashed_id, *(child.id for child in children)]
            tasks = client.read_task_runs(task_run_filter=TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(any_=runs)))
        return [run.name for run in [*children, *tasks] if run.state and not run.state.is_final()]

    wait_until(lambda: not left_running(), "closing the crashed run's tasks", timeout_s=90)
    ours = {crashed_id, final_id}
    production = load_target("production")
    promotions = [r for r in read_records(production, "production", "promotions") if r["flow_run_id"] in ours]
    approvals = [r for r in read_records(production, "production", "approvals") if r["flow_run_id"] in ours]
    assert [r["flow_run_id"] for r in promotions] == [final_id]
    assert len(approvals) == 1 and approvals[0]["approver"] == "alice"
    assert approvals[0]["subject"] == promotions[0]["plan_hash"]


def test_killed_during_the_staging_backup_upload(fresh_databases, clean_head):
    stack = fresh_databases
    with psycopg.connect(stack.database_url("staging")) as conn:  # ~60 MB to stream: the upload takes a while
        conn.execute(
            "CREATE TABLE bulk_payload AS SELECT g AS id, repeat(md5(g::text), 4) AS body "
            "FROM generate_series(1, 1200000) g"
        )
    run_id = started(*PROMOTE)

    def uploading() -> bool:
        for pid, command in run_processes(run_id).items():
            if "dbpromote.backup_stream" in command:
                with contextlib.suppress(OSError):
                    io = dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
                    return int(io["wchar"]) > 1 << 20
        return False

    wait_until(uploading, "the staging backup's upload")
    kill(stack, run_id, worker=False)
    crashed(run_id)
    assert applied(stack, "staging") == ["core.0001_initial"]
    with psycopg.connect(stack.database_url("staging")) as conn:
        conn.execute("DROP TABLE bulk_payload")

    final_id = started(*PROMOTE, "--until-paused")  # promoting again carries the crashed promotion on
    approved(final_id)
    assert_recovered(stack, clean_head, run_id, final_id)


def test_killed_between_two_staging_migrations(fresh_databases, clean_head):
    stack = fresh_databases
    with table_locked(stack.database_url("staging"), "core_task"):
        run_id = started(*PROMOTE)
        wait_until(lambda: applied(stack, "staging")[-1:] == [RELEASE[0]], "the first staging migration")
        time.sleep(1)  # the second one waits for its lock, retrying
        kill(stack, run_id, worker=False)
    crashed(run_id)
    assert applied(stack, "staging") == ["core.0001_initial", RELEASE[0]]

    final_id = started("resume", run_id, "--until-paused")
    approved(final_id)
    assert_recovered(stack, clean_head, run_id, final_id)


def test_killed_with_its_worker_during_the_approval_wait(fresh_databases, clean_head):
    stack = fresh_databases
    run_id = started(*PROMOTE, "--until-paused")
    kill(stack, run_id, worker=True)
    crashed(run_id)  # no worker saw it die: the heartbeat automation marks it
    assert run_id not in cli("pending").stdout
    refused = cli("approve", run_id, "--approver", "alice", "--acknowledge-risks")
    assert refused.returncode == 1 and f"carry it on with `dbpromote resume {run_id}`" in refused.stderr

    final_id = started("resume", run_id, "--until-paused")  # no approval was recorded: asked again
    approved(final_id)
    assert_recovered(stack, clean_head, run_id, final_id)


def test_killed_with_its_worker_between_two_production_migrations(fresh_databases, clean_head):
    stack = fresh_databases
    run_id = started(*PROMOTE, "--until-paused")
    with table_locked(stack.database_url("production"), "core_task"):
        approved(run_id)
        wait_until(lambda: applied(stack, "production")[-1:] == [RELEASE[0]], "the first production migration")
        time.sleep(1)
        kill(stack, run_id, worker=True)
    crashed(run_id)
    assert applied(stack, "production") == ["core.0001_initial", RELEASE[0]]

    recovered = cli(*PROMOTE, "--wait")  # one command: the approval given before the crash stands
    assert recovered.returncode == 0, recovered.stderr
    assert_recovered(stack, clean_head, run_id, recovered.stdout.split()[0])


def test_resume_refuses_a_run_that_is_still_running_or_completed(fresh_databases):
    done = cli("backup", "staging", "--wait")
    assert done.returncode == 0, done.stderr
    not_a_promotion = cli("resume", done.stdout.split()[0])
    assert not_a_promotion.returncode == 1
    assert "is not a promotion; only a promotion is resumed" in not_a_promotion.stderr

    waiting = PromotionInBackground()
    run = waiting.paused_run()
    still = cli("resume", str(run.id))
    assert still.returncode == 1 and f"Run {run.id} is still Paused as far as Prefect knows" in still.stderr
    assert "Traceback" not in still.stderr
