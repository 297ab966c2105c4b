"""The environment step under faults injected at the real boundaries: locks, GCS, a failing migration."""

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import pytest

from dbpromote.backups import list_backups
from dbpromote.errors import BackupError, MigrationError
from dbpromote.localstack.fault_proxy import FaultProxy
from tests.harness import RELEASE, applied, hold_lock


@contextlib.contextmanager
def backup_fails_leaving_nothing(stack, monkeypatch, proxy: FaultProxy):
    """Uploads go through `proxy` in the body; after it no new object is in the bucket and staging is still at v1."""
    from dbpromote.gcs import gcs_client

    def names() -> set[str]:
        return {blob.name for blob in gcs_client().list_blobs("dbpromote-backups", prefix="backups/staging/")}

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.endpoint)
    before = names()
    try:
        yield
    finally:
        proxy.close()
        monkeypatch.undo()
    assert names() == before  # nothing left that could look like a backup
    assert applied(stack, "staging") == ["core.0001_initial"]


def test_lock_held_by_another_session_is_waited_for_and_retried(fresh_databases, make_target):
    from dbpromote.flows.environment import migrate_environment

    target = make_target("staging-short-locks", lock_timeout_ms=300, max_lock_wait_s=60)
    # Held for a second from the migration's first wait (300 ms): refused at least once however slow the machine.
    blocker = hold_lock(fresh_databases.database_url("staging"), "core_task", 1, threading.Event(), after_a_wait=True)
    report = migrate_environment("tenant-backend", target, to="core:0003_task_priority")
    blocker.join()
    by_label = {result.label: result for result in report.migrations}
    assert by_label["core.0003_task_priority"].attempts > 1
    assert applied(fresh_databases, "staging")[-1] == "core.0003_task_priority"


def test_lock_never_released_stops_after_the_bound_at_a_known_state(fresh_databases, make_target):
    from dbpromote.flows.environment import migrate_environment

    target = make_target("staging-bounded-locks", lock_timeout_ms=200, max_lock_wait_s=3)
    done = threading.Event()
    blocker = hold_lock(fresh_databases.database_url("staging"), "core_task", 30, threading.Event())
    with pytest.raises(MigrationError) as failure:
        migrate_environment("tenant-backend", target)
    done.set()
    message = str(failure.value)
    assert "core.0003_task_priority could not get its locks" in message
    assert "at the state after core.0002_featureflag" in message
    assert "manage.py migrate core 0001_initial" in message and "gs://" in message
    assert applied(fresh_databases, "staging")[-1] == "core.0002_featureflag"
    del blocker


def test_long_running_transaction_is_named_before_migrating(fresh_databases, make_target):
    from dbpromote.flows.environment import migrate_environment

    target = make_target("staging-no-long-tx", long_transaction_s=0.5, long_transaction_wait_s=1)
    with psycopg.connect(fresh_databases.database_url("staging")) as conn:
        conn.execute("SELECT 1")  # opens a transaction and leaves it idle
        pid = conn.info.backend_pid
        time.sleep(1)
        with pytest.raises(MigrationError, match=rf"Long-running transactions on {target} .*pid {pid}, \d+ s old"):
            migrate_environment("tenant-backend", target)
    assert applied(fresh_databases, "staging") == ["core.0001_initial"]


def add_poorly_compressible_rows(stack) -> None:
    """~2.6 MB that zstd shrinks only by half: with 256 KiB chunks, a backup of several chunks."""
    with psycopg.connect(stack.database_url("staging")) as conn:
        conn.execute(
            "CREATE TABLE filler AS SELECT md5(random()::text) || md5(random()::text) AS t "
            "FROM generate_series(1, 40000)"
        )


@pytest.mark.parametrize("mode", ["503", "reset"])
@pytest.mark.parametrize("where", ["starting the upload", "mid-stream"])
def test_transient_gcs_faults_are_retried_to_success(fresh_databases, monkeypatch, mode, where):
    from dbpromote.flows.environment import migrate_environment

    add_poorly_compressible_rows(fresh_databases)
    monkeypatch.setattr("dbpromote.backups.CHUNK_SIZE", 256 * 1024)
    # Mid-stream: the session's start and two chunks pass, then the third chunk fails twice and is sent again.
    pass_first = 3 if where == "mid-stream" else 0
    proxy = FaultProxy(fresh_databases.ports["gcs"], mode=mode, fail_uploads=2, pass_first=pass_first)
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.endpoint)
    try:
        report = migrate_environment("tenant-backend", "staging")
    finally:
        proxy.close()
    assert proxy.faults_injected == 2 and proxy.chunks_passed >= 4
    # Reported only after the stored object's CRC32C matched what was dumped and it read back whole.
    assert report.backup and [m.label for m in report.migrations] == RELEASE


def test_promise_4_persistent_gcs_fault_runs_no_migration_and_reports_no_backup(fresh_databases, monkeypatch):
    from dbpromote.flows.environment import migrate_environment

    proxy = FaultProxy(fresh_databases.ports["gcs"], mode="503", fail_uploads=-1)
    monkeypatch.setenv("DBPROMOTE_GCS_RETRY_TIMEOUT_S", "2")
    with backup_fails_leaving_nothing(fresh_databases, monkeypatch, proxy):
        with pytest.raises(BackupError, match="Uploading the backup to gs://dbpromote-backups failed"):
            migrate_environment("tenant-backend", "staging")


def test_promise_3_and_7_failing_migration_names_last_applied_and_the_way_back_then_rerun_completes(fresh_databases):
    from dbpromote.flows.environment import migrate_environment

    url = fresh_databases.database_url("staging")
    with psycopg.connect(url) as conn:  # the fault: 0005's column already exists
        conn.execute("ALTER TABLE core_project ADD COLUMN slug text")
    with pytest.raises(MigrationError) as failure:
        migrate_environment("tenant-backend", "staging")
    message = str(failure.value)
    assert "core.0005_project_slug failed on staging and was rolled back" in message
    assert "staging is at the state after core.0004_task_tenant_created_idx" in message
    assert "`manage.py migrate core 0001_initial`" in message and "or restore gs://dbpromote-backups/" in message
    assert applied(fresh_databases, "staging")[-1] == "core.0004_task_tenant_created_idx"

    with psycopg.connect(url) as conn:  # the operator repairs, then runs again
        conn.execute("ALTER TABLE core_project DROP COLUMN slug")
    first_backup = message.split("or restore ")[1].split(" ")[0]
    report = migrate_environment("tenant-backend", "staging")
    assert [m.label for m in report.migrations] == RELEASE[3:]
    assert report.backup.uri != first_backup
    assert report.backup.migration_state[-1] == ("core", "0004_task_tenant_created_idx")
    labels = applied(fresh_databases, "staging")
    assert len(labels) == len(set(labels)) == 1 + len(RELEASE)


def test_backup_rerun_in_the_same_flow_run_reuses_the_verified_backup(fresh_databases):
    from dbpromote.tasks.backup import backup_to_gcs
    from prefect import flow

    from dbpromote.config import load_target

    @flow
    def backup_twice():
        target = load_target("staging")
        return backup_to_gcs(target), backup_to_gcs(target)

    first, second = backup_twice()
    assert first.uri == second.uri
    assert sum(b.flow_run_id == first.flow_run_id for b in list_backups(load_target("staging"))) == 1


def test_promise_4_an_upload_corrupted_on_the_way_is_deleted_and_never_reported(fresh_databases, monkeypatch):
    from dbpromote.flows.environment import migrate_environment

    proxy = FaultProxy(fresh_databases.ports["gcs"], mode="corrupt", fail_uploads=-1)
    with backup_fails_leaving_nothing(fresh_databases, monkeypatch, proxy):
        with pytest.raises(BackupError, match="different checksum .* the object was deleted"):
            migrate_environment("tenant-backend", "staging")
    assert proxy.faults_injected >= 1


def pg_dump_wrapped(folder: Path, then: str) -> str:
    """A PATH whose `pg_dump` runs the real one, its output in `$OUT`, then `then` (the fault); exit status is
    the wrapper's. Returns the PATH to run with."""
    real = shutil.which("pg_dump")
    wrapper = folder / "pg_dump"
    wrapper.write_text(f'#!/bin/sh\nOUT="{folder}/out"\n"{real}" "$@" > "$OUT" || exit\n{then}\n')
    wrapper.chmod(0o755)
    return f"{folder}:{os.environ['PATH']}"


def test_promise_4_pg_dump_failing_after_chunks_were_uploaded_leaves_no_object(fresh_databases, monkeypatch, tmp_path):
    """pg_dump dies after writing its whole output: chunks already went up, the last one must never be sent."""
    from dbpromote.flows.environment import migrate_environment

    add_poorly_compressible_rows(fresh_databases)
    # The fault: pg_dump exits 1 at the end of its output, as on a lost connection.
    failing = 'cat "$OUT"; echo "pg_dump: error: connection lost" >&2; exit 1'
    monkeypatch.setenv("PATH", pg_dump_wrapped(tmp_path, failing))
    monkeypatch.setattr("dbpromote.backups.CHUNK_SIZE", 256 * 1024)
    proxy = FaultProxy(fresh_databases.ports["gcs"], mode="503", fail_uploads=0)  # counts what passes
    with backup_fails_leaving_nothing(fresh_databases, monkeypatch, proxy):
        with pytest.raises(BackupError, match="pg_dump failed: pg_dump: error: connection lost; nothing was uploaded"):
            migrate_environment("tenant-backend", "staging")
    assert proxy.chunks_passed >= 3  # the failure came while the upload was well under way


def test_promise_4_a_dump_pg_restore_cannot_read_is_never_uploaded(fresh_databases, monkeypatch, tmp_path):
    """pg_dump "succeeds" but what reaches the stream is cut short at the process boundary: pg_restore, reading
    the bytes as they go up, refuses them before the last chunk, so no object is ever made."""
    from dbpromote.flows.environment import migrate_environment

    add_poorly_compressible_rows(fresh_databases)
    monkeypatch.setenv("PATH", pg_dump_wrapped(tmp_path, 'head -c -30000 "$OUT"; exit 0'))
    monkeypatch.setattr("dbpromote.backups.CHUNK_SIZE", 256 * 1024)
    proxy = FaultProxy(fresh_databases.ports["gcs"], mode="503", fail_uploads=0)  # counts what passes
    with backup_fails_leaving_nothing(fresh_databases, monkeypatch, proxy):
        with pytest.raises(BackupError, match="pg_restore could not read the dump as it was taken .*nothing was"):
            migrate_environment("tenant-backend", "staging")
    assert proxy.chunks_passed >= 3  # chunks went up before the dump was found unreadable; the object never was


def test_a_backup_is_verified_without_downloading_it_and_read_back_only_on_request(fresh_databases, monkeypatch):
    """The verification happens on the way up: no second pass over the object (billed egress on GCS), unless
    --read-back asks for one. The bucket itself is read only by the backup's bucket check: none of the clients a
    backup makes reads its metadata as well (storage.buckets.get, which the roles it needs do not grant)."""
    from dbpromote.flows.backup import backup

    from dbpromote.config import load_target

    proxy = FaultProxy(fresh_databases.ports["gcs"], mode="503", fail_uploads=0)
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.endpoint)
    try:
        (streamed,) = backup(["staging"])
        assert proxy.media_bytes_read == 0
        (read_back,) = backup(["staging"], read_back=True)
        assert proxy.media_bytes_read >= read_back.size_bytes > 0
        time.sleep(1)  # what a client reads in the background has had the time to arrive
    finally:
        proxy.close()
    assert streamed.crc32c and read_back.crc32c
    assert proxy.requests[f"GET /storage/v1/b/{load_target('staging').bucket}"] == 2  # the two bucket checks


def streamer_pids(parent: int) -> list[int]:
    """The backup streaming processes `parent` started (`python -m dbpromote.backup_stream`); other processes on
    this machine keep theirs between backups."""
    from dbpromote.backups import STREAMER

    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):  # the process ended meanwhile
            status = (cmdline.parent / "status").read_text()
            if str(STREAMER).encode() in cmdline.read_bytes().split(b"\0") and f"\nPPid:\t{parent}\n" in status:
                pids.append(int(cmdline.parent.name))
    return pids


def running(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        return "\nState:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False


def test_promise_4_a_worker_killed_mid_backup_leaves_no_object(fresh_databases, make_target, tmp_path):
    """The process running the backup is SIGKILLed (an out-of-memory kill, a preempted node) while the dump streams:
    the streaming process it started must not finish the upload on its own."""
    from dbpromote.config import load_target
    from dbpromote.gcs import gcs_client

    add_poorly_compressible_rows(fresh_databases)
    name = make_target("staging-killed", prefix=f"killed-{time.time_ns()}")
    # A dump that pauses after 2 MB, as a large table would take its time.
    slow = 'head -c 2000000 "$OUT"; sleep 4; tail -c +2000001 "$OUT"'
    code = (
        "from dbpromote.config import load_target; from dbpromote.backups import take_backup; "
        f"take_backup(load_target({name!r}), run_id='')"
    )
    env = os.environ | {"PATH": pg_dump_wrapped(tmp_path, slow)}
    worker = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=Path(__file__).resolve().parents[1])
    deadline = time.monotonic() + 60
    while not (streamers := streamer_pids(worker.pid)) and time.monotonic() < deadline and worker.poll() is None:
        time.sleep(0.05)
    assert streamers, "the backup never started streaming"
    time.sleep(1)
    worker.kill()  # SIGKILL: no cleanup runs in the worker
    worker.wait()
    deadline = time.monotonic() + 60
    while any(map(running, streamers)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(map(running, streamers)), "the orphaned streaming process went on"
    target = load_target(name)
    assert [blob.name for blob in gcs_client().list_blobs(target.bucket, prefix=f"{target.prefix}/")] == []


def test_backups_one_after_another_go_through_one_stream_process_and_a_dead_one_is_replaced(
    fresh_databases, make_target
):
    """A process that backs up target after target (a fleet's lane) streams them through one process of
    backup_stream's, each its own verified object; one that died while it waited is replaced, never used."""
    from dbpromote.backups import take_backup
    from dbpromote.config import load_target
    from dbpromote.gcs import gcs_client

    target = load_target(make_target("staging-streams", prefix=f"streams-{time.time_ns()}"))
    other = load_target(make_target("production-streams", server="production", prefix=f"streams-{time.time_ns()}"))
    first, second = take_backup(target, run_id=""), take_backup(other, run_id="")
    (kept,) = streamer_pids(os.getpid())
    third = take_backup(target, run_id="")
    assert streamer_pids(os.getpid()) == [kept]
    os.kill(kept, signal.SIGKILL)
    while running(kept):
        time.sleep(0.05)
    fourth = take_backup(target, run_id="")
    assert streamer_pids(os.getpid()) not in ([], [kept])
    backups = [first, second, third, fourth]
    assert len({backup.object_name for backup in backups}) == 4
    assert [backup.environment for backup in backups] == [target.name, other.name, target.name, target.name]
    for backup in backups:
        assert gcs_client().bucket(backup.bucket).get_blob(backup.object_name).crc32c == backup.crc32c


def test_no_migration_while_a_backup_of_the_database_runs(fresh_databases, make_target):
    from dbpromote.flows.environment import migrate_environment

    from dbpromote.config import load_target
    from dbpromote.exclusion import backup_running

    target = make_target("staging-busy", max_lock_wait_s=2)
    started, release = threading.Event(), threading.Event()

    def hold_backup_lock():
        with backup_running(load_target(target), wait_s=5):
            started.set()
            release.wait(60)

    holder = threading.Thread(target=hold_backup_lock, daemon=True)
    holder.start()
    started.wait(10)
    try:
        with pytest.raises(MigrationError, match=f"A backup of target '{target}' is still running"):
            migrate_environment("tenant-backend", target, to="core:0002_featureflag")
    finally:
        release.set()
        holder.join()
    assert applied(fresh_databases, "staging") == ["core.0001_initial"]


def test_non_atomic_migration_failing_part_way_is_reported_and_not_retried(fresh_databases):
    from dbpromote.flows.environment import migrate_environment

    with psycopg.connect(fresh_databases.database_url("staging")) as conn:
        conn.execute("CREATE INDEX task_tenant_created_idx ON core_task (id)")  # 0004's index name, taken
    with pytest.raises(MigrationError) as failure:
        migrate_environment("tenant-backend", "staging")
    message = str(failure.value)
    assert "core.0004_task_tenant_created_idx is not atomic and failed part-way on staging" in message
    assert "INVALID index" in message and "at the state after core.0003_task_priority" in message
    assert applied(fresh_databases, "staging")[-1] == "core.0003_task_priority"
