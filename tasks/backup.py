"""Backup: pg_dump streamed into a GCS object, checksummed, read back whole, and only then reported."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import zstandard
from google.api_core import exceptions as gcs_errors
from google.cloud.storage import Blob
from prefect import task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.runtime import flow_run
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from pydantic import BaseModel

import dbpromote
from dbpromote.config import DatabaseTarget
from dbpromote.errors import BackupError, redact, retry_if_transient
from tasks.exclusion import backup_running
from tasks.gcs import ChecksummingWriter, gcs_client, gcs_retry
from tasks.preflight import connect, database_facts
from tasks.run_context import in_a_run

STREAMER = Path(__file__).with_name("backup_stream.py")
# The emulator rewrites the whole object on every resumable chunk: large chunks keep that linear enough. The
# streaming process holds two (one uploading, the next filled meanwhile) beside ~50 MB of libraries: with 32 MiB
# its peak is 116 MB, over a slow link too (benchmarks/backup.py --upload-mb-per-s 40). 64 MiB streams the 1 GB
# sample into the emulator in 4.7 s instead of 5.6 s, but peaks at 180 MB over a slow link: over the 150 MB goal.
CHUNK_SIZE = 32 * 1024 * 1024
READ_SIZE = 1024 * 1024
# pg_dump's own gzip is CPU-bound (14 s for 1 GB here); -Z0 piped through zstd level 1 is ~2x faster end to end.
# Measured on the 1 GB sample (benchmarks/backup.py): level 1 in the streaming thread 8.0 s, +72 MB RSS, 257 MB
# object; level 3 on two worker threads 10.7 s, +130 MB, 268 MB: pg_dump and its server keep the other core busy.
# Levels 2 and 3 and long-distance matching shrink the object by less than 1% for 1.4-3.7x the CPU.
ZSTD_LEVEL = 1
FORMAT = "pg_dump-custom+zstd"


class Manifest(BaseModel):
    """What a backup holds, read in the dump's own snapshot: a restore is checked against it."""

    object_name: str
    crc32c: str
    size_bytes: int
    migration_state: list[tuple[str, str]]
    row_counts: dict[str, int]


def manifest_name(object_name: str) -> str:
    return f"{object_name}.manifest.json"


class Backup(BaseModel):
    """A backup that was uploaded whole and verified."""

    uri: str
    bucket: str
    object_name: str
    environment: str
    database: str
    server_version: str
    size_bytes: int
    crc32c: str
    duration_s: float
    created_at: str
    flow_run_id: str
    migration_state: list[tuple[str, str]]

    @property
    def manifest_name(self) -> str:
        return manifest_name(self.object_name)

    @classmethod
    def from_blob(cls, blob: Blob) -> Backup:
        meta = blob.metadata or {}
        return cls(
            uri=f"gs://{blob.bucket.name}/{blob.name}",
            bucket=blob.bucket.name,
            object_name=blob.name,
            environment=meta.get("environment", ""),
            database=meta.get("database", ""),
            server_version=meta.get("server_version", ""),
            size_bytes=blob.size or 0,
            crc32c=blob.crc32c or "",
            duration_s=float(meta.get("duration_s", 0)),
            created_at=meta.get("created_at", ""),
            flow_run_id=meta.get("flow_run_id", ""),
            migration_state=[tuple(pair) for pair in json.loads(meta.get("migration_state", "[]"))],
        )


def libpq_env(target: DatabaseTarget) -> dict[str, str]:
    """The target's connection as PG* variables: a password never goes on a command line, where `ps` shows it."""
    params = conninfo_to_dict(target.url.get_secret_value())
    names = {
        "host": "PGHOST",
        "port": "PGPORT",
        "user": "PGUSER",
        "password": "PGPASSWORD",
        "dbname": "PGDATABASE",
        "sslmode": "PGSSLMODE",
    }
    return os.environ | {names[key]: str(value) for key, value in params.items() if key in names}


def backup_objects(target: DatabaseTarget, target_name: str) -> tuple[list[Backup], list[Blob]]:
    """The verified backups of a target, newest first, and its dumps never marked verified."""
    blobs = gcs_client().list_blobs(target.bucket, prefix=f"{target.prefix}/{target_name}/", retry=gcs_retry())
    verified, unverified = [], []
    for blob in blobs:
        if (blob.metadata or {}).get("verified") == "true":
            verified.append(Backup.from_blob(blob))
        elif blob.name.endswith(".dump.zst"):
            unverified.append(blob)
    return sorted(verified, key=lambda backup: backup.created_at, reverse=True), unverified


def list_backups(target: DatabaseTarget, target_name: str) -> list[Backup]:
    """The verified backups of a target, newest first; objects not marked verified are never listed."""
    return backup_objects(target, target_name)[0]


def migration_state(conn: psycopg.Connection) -> list[tuple[str, str]]:
    """The applied migrations, as Django records them; empty before the first migrate."""
    if not conn.execute("SELECT to_regclass('django_migrations') IS NOT NULL").fetchone()[0]:
        return []
    return [tuple(row) for row in conn.execute("SELECT app, name FROM django_migrations ORDER BY app, name")]


def row_counts(conn: psycopg.Connection) -> dict[str, int]:
    """Exact row counts of every table a dump holds (ordinary tables outside the system schemas and extensions)."""
    tables = conn.execute(
        """
        SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema')
          AND n.nspname NOT LIKE 'pg\\_%'
          AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                          AND d.deptype = 'e')
        ORDER BY 1, 2
        """
    ).fetchall()
    query = sql.SQL("SELECT count(*) FROM {}.{}")
    return {
        f"{schema}.{table}": conn.execute(query.format(sql.Identifier(schema), sql.Identifier(table))).fetchone()[0]
        for schema, table in tables
    }


@contextlib.contextmanager
def exported_snapshot(target: DatabaseTarget, target_name: str) -> Iterator[tuple[psycopg.Connection, str]]:
    """A read-only repeatable-read transaction whose snapshot pg_dump shares: counts and state match the dump."""
    with connect(target, target_name) as conn:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        snapshot = conn.execute("SELECT pg_export_snapshot()").fetchone()[0]
        yield conn, snapshot


@task(name="backup-to-gcs", retries=1, retry_delay_seconds=5, retry_condition_fn=retry_if_transient)
def backup_to_gcs(target: DatabaseTarget, target_name: str) -> Backup:
    """pg_dump of the target streamed to GCS and verified; a re-run of the same flow run reuses its backup."""
    run_id = str(flow_run.get_id() or "")
    started = time.monotonic()
    bucket = gcs_client().bucket(target.bucket)
    with backup_running(target, target_name, wait_s=target.max_lock_wait_s):
        with exported_snapshot(target, target_name) as (conn, snapshot), ThreadPoolExecutor(1) as counter:
            state = migration_state(conn)
            for existing in list_backups(target, target_name) if run_id else []:
                if existing.flow_run_id == run_id and existing.migration_state == state:
                    return existing  # this flow run's backup of this very state: a re-run after a crash
            facts = database_facts(conn)
            counted = counter.submit(row_counts, conn)  # while pg_dump streams: both read the same snapshot
            created_at = datetime.now(UTC)
            object_name = (
                f"{target.prefix}/{target_name}/{facts['database']}/{created_at:%Y%m%dT%H%M%S.%fZ}-"
                f"{run_id[:8] or 'adhoc'}.dump.zst"
            )
            blob = bucket.blob(object_name)
            blob.metadata = {
                "environment": target_name,
                "database": facts["database"],
                "server_version": facts["server_version"],
                "dbpromote_version": dbpromote.__version__,
                "flow_run_id": run_id,
                "migration_state": json.dumps(state),
                "created_at": created_at.isoformat(),
                "format": FORMAT,
            }
            crc, size = _stream_dump(target, blob, facts["size_bytes"], snapshot)
            counts = counted.result()
    manifest = Manifest(object_name=object_name, crc32c=crc, size_bytes=size, migration_state=state, row_counts=counts)
    try:
        _verify(target, blob, crc)
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


def read_manifest(backup: Backup) -> Manifest:
    blob = gcs_client().bucket(backup.bucket).blob(backup.manifest_name)
    try:
        return Manifest.model_validate_json(blob.download_as_bytes(retry=gcs_retry()))
    except gcs_errors.NotFound:
        raise BackupError(
            f"The backup {backup.uri} has no manifest ({backup.manifest_name}), so a restore of it cannot be "
            "checked; restore another backup or take a new one with `dbpromote backup TARGET`.",
            transient=False,
        ) from None


def find_backup(target: DatabaseTarget, target_name: str, name: str = "") -> Backup:
    """The named verified backup of a target (object name or gs:// URI), or its newest when name is empty."""
    backups = list_backups(target, target_name)
    if not name:
        if not backups:
            raise BackupError(
                f"Target {target_name!r} has no verified backup under "
                f"gs://{target.bucket}/{target.prefix}/{target_name}/; take one with `dbpromote backup {target_name}`.",
                transient=False,
            )
        return backups[0]
    for backup in backups:
        if name in (backup.uri, backup.object_name):
            return backup
    raise BackupError(
        f"{name} is not a verified backup of target {target_name!r}; list them with `dbpromote backups {target_name}`.",
        transient=False,
    )


def delete_backup(bucket, object_name: str) -> None:
    """A backup and its manifest; what is already gone is fine."""
    for name in (object_name, manifest_name(object_name)):
        with contextlib.suppress(gcs_errors.NotFound):
            bucket.blob(name).delete(retry=gcs_retry())


def _stream_dump(target: DatabaseTarget, blob: Blob, database_size: int, snapshot: str) -> tuple[str, int]:
    """pg_dump into the object, in tasks/backup_stream.py's own process; the CRC32C (base64) and size of what
    was sent. No object remains on failure."""
    request = {
        "bucket": blob.bucket.name,
        "object_name": blob.name,
        "metadata": blob.metadata,
        "snapshot": snapshot,
        "chunk_size": CHUNK_SIZE,
        "zstd_level": ZSTD_LEVEL,
    }
    progress = _Progress(database_size, blob.name)
    streamer = subprocess.Popen(
        [sys.executable, str(STREAMER)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=libpq_env(target),
        text=True,
    )
    outcome: dict = {}
    try:
        streamer.stdin.write(json.dumps(request))
        streamer.stdin.close()
        for line in streamer.stdout:
            message = json.loads(line)
            if "dumped" in message:
                progress.update(message["dumped"])
            else:
                outcome = message
        stderr = streamer.stderr.read()
    finally:
        if streamer.poll() is None:
            streamer.kill()
        streamer.wait()
    url = target.url.get_secret_value()
    if outcome.get("ok"):
        progress.done()
        return outcome["crc32c"], outcome["size"]
    where = f"gs://{blob.bucket.name}"
    kind, message = outcome.get("kind"), redact(outcome.get("message", ""), url)
    if kind == "pg_dump":
        raise BackupError(
            f"pg_dump failed: {message}; nothing was uploaded: fix the error and run again.", transient=False
        )
    if kind == "corruption":
        delete_backup(blob.bucket, blob.name)
        raise BackupError(
            f"GCS stored a different checksum for {blob.name} than was uploaded; the object was deleted: run again."
        )
    if kind == "gcs":
        raise BackupError(
            f"Uploading the backup to {where} failed ({message}); nothing was migrated: "
            "check the bucket and network, then run again."
        )
    raise BackupError(
        f"The backup stream to {where} stopped unexpectedly (exit {streamer.returncode}: "
        f"{redact(stderr.strip()[-300:], url) or 'no output'}); nothing was migrated: run again."
    )


class Readback(BaseModel):
    """A stored backup streamed, decompressed, into a pg_restore: what pg_restore said and what was read."""

    returncode: int
    stderr: str
    complete: bool
    crc32c: str
    size_bytes: int

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and self.complete


class _Decompressing:
    """Decompresses what it is given into pg_restore's stdin, in a thread of its own so that the download goes on
    meanwhile, until the stream is corrupt or pg_restore stops; `close` waits for the last byte."""

    def __init__(self, stdin):
        self.corrupt, self.stopped = False, False
        # The writer passes output on in pieces of READ_SIZE: a highly compressible dump never inflates in memory.
        self.decompress = zstandard.ZstdDecompressor().stream_writer(stdin, write_size=READ_SIZE, closefd=False)
        self.pending: list[bytes] = []
        self.pending_size = 0
        self.queue: queue.Queue = queue.Queue(maxsize=4)  # pieces of READ_SIZE: at most 4 MiB ahead
        self.thread = threading.Thread(target=self._decompress, daemon=True)
        self.thread.start()

    def write(self, data: bytes) -> None:
        # The download hands over 8 KiB at a time: passed on by the MiB, a queue operation costs nothing.
        self.pending.append(data)
        self.pending_size += len(data)
        if self.pending_size >= READ_SIZE:
            self._pass_on()

    def close(self) -> None:
        self._pass_on()
        self.queue.put(None)
        self.thread.join()

    def _pass_on(self) -> None:
        if self.pending:
            self.queue.put(b"".join(self.pending))
            self.pending, self.pending_size = [], 0

    def _decompress(self) -> None:
        while (data := self.queue.get()) is not None:
            if self.corrupt or self.stopped:
                continue  # the download goes on: the checksum still covers every stored byte
            try:
                self.decompress.write(data)
            except zstandard.ZstdError:
                self.corrupt = True
            except BrokenPipeError:
                self.stopped = True  # pg_restore stopped reading; its exit status says why


def read_back_into(blob: Blob, restore_args: list[str], env: dict[str, str]) -> Readback:
    """Stream the stored object through zstd into `pg_restore RESTORE_ARGS`, reading (and checksumming) every byte.

    One streamed GET (resumed from the last byte received if the connection breaks) rather than ranged chunks:
    a request per chunk costs a round trip each on GCS, and the emulator re-reads the whole object for each.
    """
    restore = subprocess.Popen(["pg_restore", *restore_args], stdin=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    decompressing = _Decompressing(restore.stdin)
    feed = ChecksummingWriter(decompressing)
    try:
        # Our own CRC32C is compared with the recorded one by the caller: no second checksum here.
        blob.download_to_file(feed, raw_download=True, checksum=None, retry=gcs_retry())
    finally:
        decompressing.close()
        with contextlib.suppress(BrokenPipeError):
            restore.stdin.close()
        stderr = restore.stderr.read().decode(errors="replace").strip()
        returncode = restore.wait()
    return Readback(
        returncode=returncode,
        stderr=stderr,
        complete=not decompressing.corrupt,
        crc32c=feed.crc32c,
        size_bytes=feed.size,
    )


def _verify(target: DatabaseTarget, blob: Blob, crc: str) -> None:
    """The stored object has the checksum we computed, and reads back whole as a restorable dump."""
    blob.reload(retry=gcs_retry())
    if blob.crc32c != crc:
        raise BackupError(
            f"The stored backup {blob.name} has CRC32C {blob.crc32c}, not {crc} as dumped; it was deleted: run again."
        )
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
