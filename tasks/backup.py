"""Backup: pg_dump streamed into a GCS object, checksummed, read back whole, and only then reported."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
from datetime import UTC, datetime

import google_crc32c
import zstandard
from google.api_core import exceptions as gcs_errors
from google.cloud.storage import Blob
from google.resumable_media import DataCorruption
from prefect import task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.runtime import flow_run
from psycopg.conninfo import conninfo_to_dict
from pydantic import BaseModel

import dbpromote
from dbpromote.config import DatabaseTarget
from dbpromote.errors import BackupError, redact, retry_if_transient
from tasks.exclusion import backup_running
from tasks.gcs import gcs_client, gcs_retry
from tasks.preflight import database_facts
from tasks.run_context import in_a_run

# The emulator rewrites the whole object on every resumable chunk: large chunks keep that linear enough, and
# one chunk is what the writer holds in memory.
CHUNK_SIZE = 32 * 1024 * 1024
DOWNLOAD_CHUNK_SIZE = 8 * 1024 * 1024
READ_SIZE = 1024 * 1024
# pg_dump's own gzip is CPU-bound (19 s for 1 GB here); -Z0 piped through multi-threaded zstd is ~3x faster.
ZSTD_LEVEL = 3
ZSTD_THREADS = 2
FORMAT = "pg_dump-custom+zstd"


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


def list_backups(target: DatabaseTarget, target_name: str) -> list[Backup]:
    """The verified backups of a target, newest first; objects not marked verified are never listed."""
    blobs = gcs_client().list_blobs(target.bucket, prefix=f"{target.prefix}/{target_name}/", retry=gcs_retry())
    verified = [Backup.from_blob(blob) for blob in blobs if (blob.metadata or {}).get("verified") == "true"]
    return sorted(verified, key=lambda backup: backup.created_at, reverse=True)


@task(name="backup-to-gcs", retries=1, retry_delay_seconds=5, retry_condition_fn=retry_if_transient)
def backup_to_gcs(target: DatabaseTarget, target_name: str, migration_state: list[tuple[str, str]]) -> Backup:
    """pg_dump of the target streamed to GCS and verified; a re-run of the same flow run reuses its backup."""
    run_id = str(flow_run.get_id() or "")
    state = [list(pair) for pair in sorted(migration_state)]
    if run_id:
        for existing in list_backups(target, target_name):
            if existing.flow_run_id == run_id and [list(p) for p in existing.migration_state] == state:
                return existing
    facts = database_facts(target, target_name)
    database = facts["database"]
    started = time.monotonic()
    created_at = datetime.now(UTC)
    object_name = (
        f"{target.prefix}/{target_name}/{database}/{created_at:%Y%m%dT%H%M%S.%fZ}-{run_id[:8] or 'adhoc'}.dump.zst"
    )
    blob = gcs_client().bucket(target.bucket).blob(object_name)
    blob.metadata = {
        "environment": target_name,
        "database": database,
        "server_version": facts["server_version"],
        "dbpromote_version": dbpromote.__version__,
        "flow_run_id": run_id,
        "migration_state": json.dumps(state),
        "created_at": created_at.isoformat(),
        "format": FORMAT,
    }
    with backup_running(target, target_name, wait_s=target.max_lock_wait_s):
        crc = _stream_dump(target, blob, facts["size_bytes"])
    try:
        _verify(target, blob, crc)
    except BaseException:
        _delete_quietly(blob)
        raise
    blob.metadata = blob.metadata | {"verified": "true", "duration_s": f"{time.monotonic() - started:.3f}"}
    blob.patch(retry=gcs_retry())
    return Backup.from_blob(blob)


class _ChecksummingWriter:
    """Passes bytes to the upload while computing the CRC32C GCS will be compared against."""

    def __init__(self, inner):
        self.inner, self.crc, self.size = inner, google_crc32c.Checksum(), 0

    def write(self, data: bytes) -> int:
        self.crc.update(data)
        self.size += len(data)
        return self.inner.write(data)


class _ChecksummingReader:
    """Reads the downloaded object while computing its CRC32C."""

    def __init__(self, inner):
        self.inner, self.crc = inner, google_crc32c.Checksum()

    def read(self, size: int = -1) -> bytes:
        data = self.inner.read(size)
        self.crc.update(data)
        return data


def _stream_dump(target: DatabaseTarget, blob: Blob, database_size: int) -> str:
    """Run pg_dump into the object; the CRC32C (base64) of what was sent. No object remains if anything fails."""
    dump = subprocess.Popen(
        ["pg_dump", "--format=custom", "--compress=0", "--no-sync"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=libpq_env(target),
    )
    progress = _Progress(database_size, blob.name)
    try:
        with blob.open(
            "wb", chunk_size=CHUNK_SIZE, checksum="crc32c", if_generation_match=0, retry=gcs_retry()
        ) as upload:
            writer = _ChecksummingWriter(upload)
            compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL, threads=ZSTD_THREADS)
            with compressor.stream_writer(writer, closefd=False) as compressed:
                dumped = 0
                while chunk := dump.stdout.read(READ_SIZE):
                    compressed.write(chunk)
                    dumped += len(chunk)
                    progress.update(dumped)
            if dump.wait() != 0:
                # Raising inside the writer cancels the resumable upload: no partial object appears.
                stderr = dump.stderr.read().decode(errors="replace").strip()
                raise BackupError(
                    f"pg_dump failed: {redact(stderr, target.url.get_secret_value())}; "
                    "nothing was uploaded: fix the error and run again.",
                    transient=False,
                )
    except DataCorruption:
        _delete_quietly(blob)
        raise BackupError(
            f"GCS stored a different checksum for {blob.name} than was uploaded; the object was deleted: run again."
        ) from None
    except gcs_errors.GoogleAPIError as error:
        raise BackupError(
            f"Uploading the backup to gs://{blob.bucket.name} failed ({error}); nothing was migrated: "
            "check the bucket and network, then run again."
        ) from None
    except OSError as error:  # requests' connection errors are OSErrors; GCS gave up retrying
        raise BackupError(
            f"Uploading the backup to gs://{blob.bucket.name} failed ({type(error).__name__}); "
            "nothing was migrated: check the bucket and network, then run again."
        ) from None
    finally:
        if dump.poll() is None:
            dump.kill()
            dump.wait()
        dump.stdout.close()
        dump.stderr.close()
    progress.done()
    return base64.b64encode(writer.crc.digest()).decode()


def _verify(target: DatabaseTarget, blob: Blob, crc: str) -> None:
    """The stored object has the checksum we computed, and reads back whole as a restorable dump."""
    blob.reload(retry=gcs_retry())
    if blob.crc32c != crc:
        raise BackupError(
            f"The stored backup {blob.name} has CRC32C {blob.crc32c}, not {crc} as dumped; it was deleted: run again."
        )
    # pg_restore --list accepts a truncated dump; reading every byte into /dev/null does not.
    restore = subprocess.Popen(
        ["pg_restore", "--file=/dev/null"], stdin=subprocess.PIPE, stderr=subprocess.PIPE, env=libpq_env(target)
    )
    complete = False
    with blob.open("rb", chunk_size=DOWNLOAD_CHUNK_SIZE, retry=gcs_retry()) as download:
        read_back = _ChecksummingReader(download)
        try:
            # A stream reader bounds the output per read: a highly compressible dump must not inflate in memory.
            with zstandard.ZstdDecompressor().stream_reader(read_back, read_size=READ_SIZE) as dump:
                while chunk := dump.read(READ_SIZE):
                    restore.stdin.write(chunk)
            complete = True
            restore.stdin.close()
        except (BrokenPipeError, zstandard.ZstdError):
            pass  # pg_restore stopped reading or the stream is corrupt: both are reported below
        while read_back.read(READ_SIZE):  # the checksum covers every stored byte, even past the frame
            pass
    stderr = restore.stderr.read().decode(errors="replace").strip()
    if restore.wait() != 0 or not complete:
        raise BackupError(
            f"The stored backup {blob.name} does not read back as a complete dump "
            f"({stderr or 'truncated'}); it was deleted: run again."
        )
    if base64.b64encode(read_back.crc.digest()).decode() != crc:
        raise BackupError(
            f"The stored backup {blob.name} read back with a different checksum; it was deleted: run again."
        )


def _delete_quietly(blob: Blob) -> None:
    try:
        blob.delete(retry=gcs_retry())
    except gcs_errors.NotFound:
        pass


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
