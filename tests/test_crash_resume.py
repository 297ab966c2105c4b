"""The kill matrix: a promotion's flow-run process (and in two cases its worker too) killed with SIGKILL, as when
a machine dies, at five points, and its worker killed during the approval wait, when the suspended run holds no
process at all; each time Prefect marks the run Crashed by itself, nothing the dead process started goes on, and
one command carries the promotion to the state a clean one gives: no row lost, no migration applied twice, no
backup reported twice (promise 7). `pytest -s` prints each point's figures."""

import contextlib
import json
import os
import signal
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from dbpromote import localstack as local_stack
from tests.harness import (
    RELEASE,
    PromotionInBackground,
    applied,
    cli,
    crashed,
    kill,
    run_processes,
    started,
    table_locked,
    target_changed,
    wait_for_run,
    wait_until,
    waits_for_a_lock,
)
from tests.test_promote import catalog_snapshot

PROMOTE = ["promote", "--project", "tenant-backend", "--through", "staging,production"]


@pytest.fixture(scope="module")
def clean_head(promoted) -> tuple[str, dict[str, int]]:
    """Production's schema and row counts after a clean promotion of the release: what every recovered promotion
    must give."""
    return catalog_snapshot(promoted, "production")[0], row_counts(promoted, "production")


def row_counts(stack, server: str) -> dict[str, int]:
    """The rows of every table of the application's schema."""
    with psycopg.connect(stack.database_url(server)) as conn:
        tables = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1").fetchall()
        count = sql.SQL("SELECT count(*) FROM {}")
        return {t: conn.execute(count.format(sql.Identifier(t))).fetchone()[0] for (t,) in tables}


def listed_backups() -> dict[str, set[str]]:
    """The verified backups each target lists."""
    from dbpromote.backups import list_backups
    from dbpromote.config import load_target

    return {s: {b.object_name for b in list_backups(load_target(s))} for s in local_stack.SERVERS}


@pytest.fixture
def killed(fresh_databases):
    """The stack with both databases at v1, and what each target listed as backups before this point's kill."""
    fresh_databases.backups_before = listed_backups()
    return fresh_databases


def approved(run_id: str) -> None:
    result = cli("approve", run_id, "--approver", "alice", "--comment", "after the crash", "--acknowledge-risks")
    assert result.returncode == 0, result.stderr


def assert_recovered(stack, clean_head, point: str, crashed_id: str, final_id: str, backups: dict[str, int]) -> None:
    """The state a clean promotion gives (schema and every table's rows), no migration twice, `backups` new backups
    per target each of another state, nothing left running, one promotion, one approval."""
    from prefect import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterParentFlowRunId,
        TaskRunFilter,
        TaskRunFilterFlowRunId,
    )

    from dbpromote.backups import list_backups
    from dbpromote.config import load_target
    from dbpromote.records import read_records
    from dbpromote.runs import NOT_FINAL, flow_runs

    assert wait_for_run(final_id).is_completed()
    schema, rows = clean_head
    twice, lost, taken = 0, 0, {}
    for server in local_stack.SERVERS:
        twice += len(applied(stack, server)) - len(set(applied(stack, server)))
        assert applied(stack, server) == ["core.0001_initial", *RELEASE]  # each once, in order
        assert catalog_snapshot(stack, server)[0] == schema
        lost += sum(max(0, n - row_counts(stack, server).get(table, 0)) for table, n in rows.items())
        assert row_counts(stack, server) == rows
        new = [b for b in list_backups(load_target(server)) if b.object_name not in stack.backups_before[server]]
        taken[server] = [b.migration_state for b in new]
    # A backup is taken before a target's first change in a run; carrying a run on backs up the state reached since.
    assert {server: len(states) for server, states in taken.items()} == backups, taken
    reported_twice = sum(len(states) - len({json.dumps(s) for s in states}) for states in taken.values())
    assert reported_twice == 0, taken
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
    promotions = [r for r in read_records(production, "promotions") if r["flow_run_id"] in ours]
    approvals = [r for r in read_records(production, "approvals") if r["flow_run_id"] in ours]
    assert [r["flow_run_id"] for r in promotions] == [final_id]
    assert len(approvals) == 1 and approvals[0]["approver"] == "alice"
    assert approvals[0]["subject"] == promotions[0]["plan_hash"]
    print(
        f"\nkilled {point}: rows lost {lost}, migrations applied twice {twice}, backups reported twice "
        f"{reported_twice} ({sum(backups.values())} taken), end state correct"
    )


def uploading(run_id: str) -> bool:
    """The run's backup stream has sent more than a MiB: a backup is part-way up."""
    for pid, command in run_processes(run_id).items():
        if "dbpromote.backup_stream" in command:
            with contextlib.suppress(OSError):
                io = dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
                return int(io["wchar"]) > 1 << 20
    return False


@contextlib.contextmanager
def bulky(stack, server: str):
    """~60 MB more to stream, so that a backup's upload takes a while; dropped before the promotion is carried on.
    The table is drift (no migration made it): the target warns of it rather than stopping the promotion."""
    with psycopg.connect(stack.database_url(server)) as conn:
        conn.execute(
            "CREATE TABLE bulk_payload AS SELECT g AS id, repeat(md5(g::text), 4) AS body "
            "FROM generate_series(1, 1200000) g"
        )
    with target_changed(server, drift="warn"):
        yield
    with psycopg.connect(stack.database_url(server)) as conn:
        conn.execute("DROP TABLE bulk_payload")


def test_killed_with_its_worker_during_preflight(killed, clean_head):
    stack = killed
    run_id = started(*PROMOTE)
    planning = lambda: any("django_probe" in command for command in run_processes(run_id).values())  # noqa: E731
    wait_until(planning, "staging's preflight", poll_s=0.02)
    kill(stack, run_id, worker=True)
    crashed(run_id)
    assert applied(stack, "staging") == ["core.0001_initial"] and listed_backups() == stack.backups_before

    final_id = started("resume", run_id, "--until-paused")
    approved(final_id)
    assert_recovered(
        stack, clean_head, "with its worker during preflight", run_id, final_id, {"staging": 1, "production": 1}
    )


def test_killed_during_the_staging_backup_upload(killed, clean_head):
    stack = killed
    with bulky(stack, "staging"):
        run_id = started(*PROMOTE)
        wait_until(lambda: uploading(run_id), "the staging backup's upload")
        kill(stack, run_id, worker=False)
        crashed(run_id)
        assert applied(stack, "staging") == ["core.0001_initial"]

    final_id = started(*PROMOTE, "--until-paused")  # promoting again carries the crashed promotion on
    approved(final_id)
    assert_recovered(
        stack, clean_head, "during the staging backup upload", run_id, final_id, {"staging": 1, "production": 1}
    )


def test_killed_between_two_staging_migrations(killed, clean_head):
    stack = killed
    with table_locked(stack.database_url("staging"), "core_task"):
        run_id = started(*PROMOTE)
        wait_until(lambda: applied(stack, "staging")[-1:] == [RELEASE[0]], "the first staging migration")
        wait_until(lambda: waits_for_a_lock(stack, "staging"), "the second one to wait for its lock")
        kill(stack, run_id, worker=False)
    crashed(run_id)
    assert applied(stack, "staging") == ["core.0001_initial", RELEASE[0]]

    final_id = started("resume", run_id, "--until-paused")
    approved(final_id)
    assert_recovered(
        stack, clean_head, "between two staging migrations", run_id, final_id, {"staging": 2, "production": 1}
    )


def test_the_approval_wait_holds_no_process_and_outlives_its_worker(killed, clean_head):
    """While production's approval is awaited the run is suspended: no flow-run process exists, no worker slot is
    held, so the machine may die; a new worker carries the approved run on, staging's work not done again."""
    stack = killed
    run_id = started(*PROMOTE, "--until-paused")
    wait_until(lambda: run_processes(run_id) == {}, "the suspended run's process to end", timeout_s=30)
    os.kill(local_stack.Stack.load(stack.home).pids["worker"], signal.SIGKILL)
    local_stack.up(stack.home, deploy=False)  # a new worker, as after a machine is replaced
    assert run_id in cli("pending").stdout
    approved(run_id)
    assert_recovered(
        stack, clean_head, "with its worker during the approval wait", run_id, run_id, {"staging": 1, "production": 1}
    )


def test_killed_during_the_production_backup(killed, clean_head):
    stack = killed
    with bulky(stack, "production"):
        run_id = started(*PROMOTE, "--until-paused")
        approved(run_id)
        wait_until(lambda: uploading(run_id), "the production backup's upload")  # staging's ended before the pause
        kill(stack, run_id, worker=False)
        crashed(run_id)
        assert applied(stack, "production") == ["core.0001_initial"]

    recovered = cli("resume", run_id, "--wait")  # the approval given before the crash stands
    assert recovered.returncode == 0, recovered.stderr
    final_id = recovered.stdout.split()[0]
    assert_recovered(
        stack, clean_head, "during the production backup", run_id, final_id, {"staging": 1, "production": 1}
    )


def test_killed_with_its_worker_between_two_production_migrations(killed, clean_head):
    stack = killed
    run_id = started(*PROMOTE, "--until-paused")
    with table_locked(stack.database_url("production"), "core_task"):
        approved(run_id)
        wait_until(lambda: applied(stack, "production")[-1:] == [RELEASE[0]], "the first production migration")
        wait_until(lambda: waits_for_a_lock(stack, "production"), "the second one to wait for its lock")
        kill(stack, run_id, worker=True)
    crashed(run_id)
    assert applied(stack, "production") == ["core.0001_initial", RELEASE[0]]

    recovered = cli(*PROMOTE, "--wait")  # one command: the approval given before the crash stands
    assert recovered.returncode == 0, recovered.stderr
    final_id = recovered.stdout.split()[0]
    assert_recovered(
        stack,
        clean_head,
        "with its worker between two production migrations",
        run_id,
        final_id,
        {"staging": 1, "production": 2},
    )


@pytest.mark.parametrize("moment", ["before its first heartbeat", "after its first heartbeat"])
def test_killed_with_its_worker_right_after_it_resumes_from_its_approval(killed, clean_head, moment):
    """Approved at once, its new process SIGKILLed with the worker as the run resumes: the moment the process
    exists (before it has sent a heartbeat or read its approval), or once it has read the approval and production's
    first migration waits for a lock (after its first heartbeat). The crash automation marks it Crashed both times,
    and one command carries it on: an approval the run read stands; one it never read is asked for again."""
    stack = killed
    run_id = started(*PROMOTE, "--until-paused")
    wait_until(lambda: run_processes(run_id) == {}, "the suspended run's process to end", timeout_s=30)
    with table_locked(stack.database_url("production"), "core_task"):
        approved(run_id)
        wait_until(
            lambda: any("prefect.engine" in c for c in run_processes(run_id).values()),
            "the resumed process",
            poll_s=0.02,
        )
        if moment == "after its first heartbeat":
            wait_until(lambda: waits_for_a_lock(stack, "production"), "production's migration to wait for its lock")
        kill(stack, run_id, worker=True)
    crashed(run_id)
    assert applied(stack, "production")[:1] == ["core.0001_initial"]
    # Production is backed up again by the recovery only if the killed run had changed it since its own backup.
    production_backups = 2 if len(applied(stack, "production")) > 1 else 1

    if moment == "before its first heartbeat":
        final_id = started(*PROMOTE, "--until-paused")  # the approval was never read: it is asked for again
        approved(final_id)
    else:
        recovered = cli(*PROMOTE, "--wait")  # one command: the approval the run read stands
        assert recovered.returncode == 0, recovered.stderr
        final_id = recovered.stdout.split()[0]
    assert_recovered(
        stack, clean_head, f"with its worker as it resumed, {moment}", run_id, final_id,
        {"staging": 1, "production": production_backups},
    )  # fmt: skip


def test_resume_refuses_a_run_that_is_still_running_or_completed(fresh_databases):
    done = cli("backup", "staging", "--wait")
    assert done.returncode == 0, done.stderr
    not_a_promotion = cli("resume", done.stdout.split()[0])
    assert not_a_promotion.returncode == 1
    assert "is a backup run; only a promotion or a fix is resumed" in not_a_promotion.stderr

    waiting = PromotionInBackground()
    run = waiting.paused_run()
    still = cli("resume", str(run.id))
    assert still.returncode == 1 and f"Run {run.id} is still Paused as far as Prefect knows" in still.stderr
    assert "Traceback" not in still.stderr
