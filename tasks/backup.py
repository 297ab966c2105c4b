"""Backup: pg_dump streamed into a GCS object, checksummed, read back whole, and only then reported."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import psycopg
from google.cloud.storage import Blob
from prefect import task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

import dbpromote
from dbpromote.backup_stream import ANSWER as STREAM_ANSWER
from dbpromote.backup_stream import Progress, Streamed, StreamFailed, StreamRequest
from dbpromote.backups import delete_backup, list_backups, read_back_into
from dbpromote.config import DatabaseTarget
from dbpromote.errors import BackupError, redact, retry_if_transient
from dbpromote.exclusion import backup_running
from dbpromote.gcs import gcs_client, gcs_retry
from dbpromote.lifeline import PARENT_PID
from dbpromote.models.backup import FORMAT, Backup, Manifest, manifest_name
from dbpromote.postgres import connect, database_facts, libpq_env, migration_state, row_counts
from dbpromote.run_context import in_a_run

# Run as `python -m STREAMER`: dbpromote/backup_stream.py.
STREAMER = "dbpromote.backup_stream"
# The emulator rewrites the whole object on every resumable chunk: large chunks keep that linear enough. The
# streaming process holds two (one uploading, the next filled meanwhile) beside ~50 MB of libraries: with 32 MiB
# its peak is 116 MB, over a slow link too (benchmarks/backup.py --upload-mb-per-s 40). 64 MiB streams the 1 GB
# sample into the emulator in 4.7 s instead of 5.6 s, but peaks at 180 MB over a slow link: over the 150 MB goal.
CHUNK_SIZE = 32 * 1024 * 1024
# pg_dump's own gzip is CPU-bound (14 s for 1 GB here); -Z0 piped through zstd level 1 is ~2x faster end to end.
# Measured on the 1 GB sample (benchmarks/backup.py): level 1 in the streaming thread 8.0 s, +72 MB RSS, 257 MB
# object; level 3 on two worker threads 10.7 s, +130 MB, 268 MB: pg_dump and its server keep the other core busy.
# Levels 2 and 3 and long-distance matching shrink the object by less than 1% for 1.4-3.7x the CPU.
ZSTD_LEVEL = 1


@contextlib.contextmanager
def exported_snapshot(target: DatabaseTarget, target_name: str) -> Iterator[tuple[psycopg.Connection, str]]:
    """A read-only repeatable-read transaction whose snapshot pg_dump shares: counts and state match the dump."""
    with connect(target, target_name) as conn:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        snapshot = conn.execute("SELECT pg_export_snapshot()").fetchone()[0]
        yield conn, snapshot


@task(
    name="backup-to-gcs", retries=1, retry_delay_seconds=5, retry_condition_fn=retry_if_transient, cache_policy=NO_CACHE
)
def backup_to_gcs(target: DatabaseTarget, target_name: str, read_back: bool = False) -> Backup:
    """pg_dump of the target streamed to GCS, read whole by pg_restore on its way up, and verified by the checksum
    GCS stored; with read_back, also downloaded again and read whole. A re-run of the same flow run reuses its
    backup."""
    run_id = str(flow_run.get_id() or "")
    started = time.monotonic()
    bucket = gcs_client(target.gcp_credentials).bucket(target.bucket)
    with backup_running(target, target_name, wait_s=target.max_lock_wait_s):
        with exported_snapshot(target, target_name) as (conn, snapshot), ThreadPoolExecutor(1) as counter:
            state = migration_state(conn)
            for existing in list_backups(target, target_name) if run_id else []:
                if existing.flow_run_id == run_id and existing.migration_state == state:
                    return existing  # this flow run's backup of this very state: a re-run after a crash
            facts = database_facts(conn)
            counted = counter.submit(row_counts, conn)  # while pg_dump streams: both read the same snapshot
            created_at = datetime.now(UTC)
            blob = bucket.blob(_object_name(target, target_name, facts["database"], created_at, run_id))
            blob.metadata = _metadata(target_name, facts, created_at, run_id, state)
            crc, size = _stream_dump(target, blob, facts["size_bytes"], snapshot)
            counts = counted.result()
    object_name = blob.name
    manifest = Manifest(object_name=object_name, crc32c=crc, size_bytes=size, migration_state=state, row_counts=counts)
    try:
        _verify(target, blob, crc, read_back)
        bucket.blob(manifest_name(object_name)).upload_from_string(
            manifest.model_dump_json(indent=1),
            content_type="application/json",
            if_generation_match=0,
            retry=gcs_retry(),
        )
    except BaseException:
        delete_backup(bucket, object_name)
        raise
    blob.metadata = blob.metadata | {"verified": "true", "duration_s": f"{time.monotonic() - started:.3f}"}
    blob.patch(retry=gcs_retry())
    return Backup.from_blob(blob)


def _object_name(target: DatabaseTarget, target_name: str, database: str, created_at: datetime, run_id: str) -> str:
    """PREFIX/TARGET/DATABASE/TIME-RUN.dump.zst: names sort by time."""
    return f"{target.prefix}/{target_name}/{database}/{created_at:%Y%m%dT%H%M%S.%fZ}-{run_id[:8] or 'adhoc'}.dump.zst"


def _metadata(
    target_name: str, facts: dict, created_at: datetime, run_id: str, state: list[tuple[str, str]]
) -> dict[str, str]:
    """What the object says of itself; `verified` is added only once it has been read back."""
    return {
        "environment": target_name,
        "database": facts["database"],
        "server_version": facts["server_version"],
        "dbpromote_version": dbpromote.__version__,
        "flow_run_id": run_id,
        "migration_state": json.dumps(state),
        "created_at": created_at.isoformat(),
        "format": FORMAT,
    }


def _stream_dump(target: DatabaseTarget, blob: Blob, database_size: int, snapshot: str) -> tuple[str, int]:
    """pg_dump into the object, in dbpromote/backup_stream.py's own process; the CRC32C (base64) and size of what
    was sent. No object remains on failure."""
    request = StreamRequest(
        bucket=blob.bucket.name,
        object_name=blob.name,
        metadata=blob.metadata,
        snapshot=snapshot,
        chunk_size=CHUNK_SIZE,
        zstd_level=ZSTD_LEVEL,
        credentials_block=target.gcp_credentials,
    )
    progress = _Progress(database_size, blob.name)
    streamer = subprocess.Popen(
        [sys.executable, "-m", STREAMER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=libpq_env(target) | {PARENT_PID: str(os.getpid())},
        text=True,
    )
    outcome: Streamed | StreamFailed | None = None
    try:
        streamer.stdin.write(request.model_dump_json())
        streamer.stdin.close()
        for line in streamer.stdout:
            message = STREAM_ANSWER.validate_json(line)
            if isinstance(message, Progress):
                progress.update(message.dumped)
            else:
                outcome = message
        stderr = streamer.stderr.read()
    finally:
        if streamer.poll() is None:
            streamer.kill()
        streamer.wait()
    if isinstance(outcome, Streamed):
        progress.done()
        return outcome.crc32c, outcome.size
    url = target.url.get_secret_value()
    if outcome is None:
        raise BackupError(
            f"The backup stream to gs://{blob.bucket.name} stopped unexpectedly (exit {streamer.returncode}: "
            f"{redact(stderr.strip()[-300:], url) or 'no output'}); nothing was migrated: run again."
        )
    raise _stream_failure(outcome, blob, url)


def _stream_failure(failed: StreamFailed, blob: Blob, url: str) -> BackupError:
    """The error a failed stream means; what it left in the bucket is gone."""
    message = redact(failed.message, url)
    if failed.reason == "pg_dump":
        return BackupError(
            f"pg_dump failed: {message}; nothing was uploaded: fix the error and run again.", transient=False
        )
    if failed.reason == "unreadable":
        return BackupError(
            f"pg_restore could not read the dump as it was taken ({message}); nothing was uploaded: check pg_dump "
            "(its version, the disk, the wrapper on PATH) and run again.",
            transient=False,
        )
    if failed.reason == "corruption":
        delete_backup(blob.bucket, blob.name)
        return BackupError(
            f"GCS stored a different checksum for {blob.name} than was uploaded; the object was deleted: run again."
        )
    return BackupError(
        f"Uploading the backup to gs://{blob.bucket.name} failed ({message}); nothing was migrated: "
        "check the bucket and network, then run again."
    )


def _verify(target: DatabaseTarget, blob: Blob, crc: str, read_back: bool) -> None:
    """The stored object has the checksum of the bytes pg_restore read whole on their way up (so the store holds
    exactly a readable dump); with read_back, it also downloads and reads back whole."""
    blob.reload(retry=gcs_retry())
    if blob.crc32c != crc:
        raise BackupError(
            f"The stored backup {blob.name} has CRC32C {blob.crc32c}, not {crc} as dumped; it was deleted: run again."
        )
    if not read_back:
        return
    # pg_restore --list accepts a truncated dump; reading every byte into /dev/null does not.
    result = read_back_into(blob, ["--file=/dev/null"], libpq_env(target))
    if not result.ok:
        raise BackupError(
            f"The stored backup {blob.name} does not read back as a complete dump "
            f"({result.stderr or 'truncated'}); it was deleted: run again."
        )
    if result.crc32c != crc:
        raise BackupError(
            f"The stored backup {blob.name} read back with a different checksum; it was deleted: run again."
        )


class _Progress:
    """A Prefect progress artifact, estimated from bytes dumped over the database's size on disk."""

    def __init__(self, total: int, name: str):
        self.total, self.last = max(total, 1), 0.0
        self.artifact = create_progress_artifact(0.0, description=f"Backup {name}") if in_a_run() else None

    def update(self, dumped: int) -> None:
        if self.artifact and time.monotonic() - self.last > 2:
            self.last = time.monotonic()
            update_progress_artifact(self.artifact, min(99.0, 100.0 * dumped / self.total))

    def done(self) -> None:
        if self.artifact:
            update_progress_artifact(self.artifact, 100.0)
