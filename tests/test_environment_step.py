"""The environment step on the sample release, against the real stack."""

import subprocess
import time
from uuid import UUID

import psycopg

from dbpromote.backups import list_backups
from dbpromote.postgres import libpq_env
from tests.harness import RELEASE, applied


def test_happy_path_backs_up_migrates_and_verifies(fresh_databases):
    from dbpromote.flows.environment import migrate_environment

    from dbpromote.config import load_target

    stack = fresh_databases
    report = migrate_environment("tenant-backend", "staging")

    assert [m.label for m in report.migrations] == RELEASE
    assert applied(stack, "staging") == ["core.0001_initial", *RELEASE]
    assert report.verification.passed, report.verification.failures
    backups = list_backups(load_target("staging"))
    assert backups[0].uri == report.backup.uri
    assert backups[0].migration_state == [("core", "0001_initial")]
    assert applied(stack, "production") == ["core.0001_initial"]  # untouched


def test_backup_restores_to_the_state_before(fresh_databases, tmp_path):
    from dbpromote.flows.environment import migrate_environment

    from dbpromote.config import load_target
    from dbpromote.gcs import gcs_client

    stack = fresh_databases
    report = migrate_environment("tenant-backend", "staging")
    target = load_target("staging")
    dump = tmp_path / "backup.dump.zst"
    gcs_client().bucket(report.backup.bucket).blob(report.backup.object_name).download_to_filename(dump)
    with psycopg.connect(**stack.superuser_conninfo("staging"), autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS restored")
        conn.execute("CREATE DATABASE restored OWNER tenant_owner")
    env = libpq_env(target) | {"PGDATABASE": "restored"}
    restore = subprocess.run(
        f"zstd -dc {dump} | pg_restore --no-owner -d restored", shell=True, env=env, capture_output=True, text=True
    )
    assert restore.returncode == 0, restore.stderr
    url = stack.database_url("staging").rsplit("/", 1)[0] + "/restored"
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*) FROM core_tenant").fetchone()[0] == 3
        assert conn.execute("SELECT name FROM django_migrations").fetchall() == [("0001_initial",)]
        assert conn.execute("SELECT count(*) FROM core_task").fetchone()[0] == 60


def test_promise_7_rerun_applies_nothing_twice(fresh_databases):
    from dbpromote.flows.environment import migrate_environment

    migrate_environment("tenant-backend", "staging")
    again = migrate_environment("tenant-backend", "staging")
    assert again.plan.migrations == [] and again.migrations == []
    assert again.verification.passed


def test_one_probe_plans_other_databases_of_the_project_each_as_its_own(fresh_databases):
    """A promotion plans every target with one Django: each plan is its own database's (as a probe of its own
    would answer), and the session's target is planned as its own again after another's."""
    from dbpromote.flows.environment import migrate_environment

    from dbpromote.config import load_project, load_target
    from dbpromote.probe import ProbeSession, run_probe

    migrate_environment("tenant-backend", "staging")  # staging at the release's head, production at v1
    project, staging, production = load_project("tenant-backend"), load_target("staging"), load_target("production")
    alone = {name: run_probe(project, load_target(name), "plan", "--to", "") for name in ("staging", "production")}
    assert alone["staging"].migrations == [] and len(alone["production"].migrations) == len(RELEASE)
    with ProbeSession(project, staging) as probe:
        assert probe.plan("", production) == alone["production"]
        assert probe.plan("") == alone["staging"]
        assert probe.plan("", production).applied == [("core", "0001_initial")]


def test_a_step_reads_each_target_once_and_the_step_after_it_reads_it_again(make_target):
    """What a step acts on is resolved at its edge (a block read costs the caller ~50 ms of CPU and the server
    ~28 ms): within it a target is read once, nested steps share that read, and a change made meanwhile (a person
    edits a target while a promotion waits for its approval) is what the next step reads."""
    from dbpromote.config import load_target, resolved_once

    name = make_target("read-once", window_lock_s=10)
    with resolved_once():
        first = load_target(name)
        make_target(name, window_lock_s=20)
        assert load_target(name) is first and first.window_lock_s == 10
        with resolved_once():
            assert load_target(name) is first
    assert load_target(name).window_lock_s == 20
    with resolved_once():
        assert load_target(name).window_lock_s == 20


def test_dbpromotes_runs_send_their_own_heartbeats_outlive_the_crash_window_and_none_is_taken_for_dead_after_its_end(
    stack, monkeypatch
):
    """Every run of dbpromote's flows sends its own heartbeats (flows/parts.py), a subflow in its parent's process
    too: a step longer than the crash automation's window is not taken for dead, as a silent one is; runs that end
    just as a heartbeat is due are not taken for dead after their end (their last heartbeat is sent before their
    final state); a team's own silent flow on the same server is none of the automation's business. On the stack
    with the shortest window Prefect allows (10 s; the automation looks every 5 s) and heartbeats every 2 s."""
    from concurrent.futures import ThreadPoolExecutor

    import prefect
    from dbpromote.flows.parts import flow
    from prefect import get_client
    from prefect.runtime import flow_run

    from dbpromote.deploying import crashed_after_s, install_crash_detection

    def lasting(seconds: float) -> str:
        time.sleep(seconds)
        return str(flow_run.get_id())

    step = flow(name="migrate-environment")(lasting)  # dbpromote's
    silent = prefect.flow(name="migrate-environment")(lasting)  # named as dbpromote's, with no heartbeat
    theirs = prefect.flow(name="a-teams-own-nightly-job")(lasting)
    backup = flow(name="backup")(lasting)

    @flow(name="promote")
    def promotion() -> tuple[str, str]:
        return step(16), silent(16)

    monkeypatch.setenv("DBPROMOTE_HEARTBEAT_S", "2")
    install_crash_detection(stack.prefect_api_url, 10)
    try:
        with ThreadPoolExecutor(2) as pool:
            team = pool.submit(theirs, 16)
            due = pool.submit(lambda: [backup(2.0) for _ in range(4)])  # each ends as its first heartbeat is due
            beating, quiet = promotion()
            runs = {"beating": beating, "silent": quiet, "theirs": team.result()}
            runs |= {f"ended {n}": run for n, run in enumerate(due.result())}
        time.sleep(12)  # the window and the automation's next look, after the last of them ended
        with get_client(sync_client=True) as client:
            states = {k: [s.name for s in client.read_flow_run_states(UUID(run))] for k, run in runs.items()}
    finally:
        install_crash_detection(stack.prefect_api_url, crashed_after_s())
    assert "Crashed" in states.pop("silent"), states
    assert all(names == ["Pending", "Running", "Completed"] for names in states.values()), states
