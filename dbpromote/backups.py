"""The backups in the bucket: taken (pg_dump streamed to GCS and verified), listed, found by name, read back through
pg_restore, deleted with their manifests."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import psycopg
from google.api_core import exceptions as gcs_errors
from google.cloud.storage import Blob

import dbpromote
from dbpromote.backup_stream import ANSWER as STREAM_ANSWER
from dbpromote.backup_stream import IDLE_S, Progress, Streamed, StreamFailed, StreamRequest
from dbpromote.config import DatabaseTarget
from dbpromote.dumps import Readback, RestoreFeed
from dbpromote.errors import BackupError, PreflightError, RestoreError, redact
from dbpromote.exclusion import backup_running
from dbpromote.gcs import gcs_client, gcs_retry
from dbpromote.lifeline import PARENT_PID
from dbpromote.models.backup import FORMAT, Backup, Manifest, manifest_name
from dbpromote.postgres import connect, database_facts, libpq_env, migration_state, row_counts
from dbpromote.reporting import BackupProgress

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
def exported_snapshot(target: DatabaseTarget) -> Iterator[tuple[psycopg.Connection, str]]:
    """A read-only repeatable-read transaction whose snapshot pg_dump shares: counts and state match the dump."""
    with connect(target) as conn:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        snapshot = conn.execute("SELECT pg_export_snapshot()").fetchone()[0]
        yield conn, snapshot


def check_bucket(target: DatabaseTarget) -> None:
    """The target's backup bucket exists and accepts writes (an object written and deleted), or the sentence that
    says which credentials, bucket or permission to fix."""
    client = gcs_client(target.gcp_credentials)
    try:
        bucket = client.lookup_bucket(target.bucket, retry=gcs_retry())
    except gcs_errors.GoogleAPIError as error:
        raise PreflightError(
            f"The backup bucket {target.bucket!r} of target {target.name!r} cannot be read ({error}); "
            "check the credentials and the GCS endpoint.",
            transient=True,
        ) from None
    if bucket is None:
        raise PreflightError(
            f"The backup bucket {target.bucket!r} of target {target.name!r} does not exist; create it "
            f"or set another with `dbpromote target add {target.name} --bucket NAME`."
        )
    probe = bucket.blob(f"{target.prefix}/.dbpromote-write-check-{uuid.uuid4().hex}")
    try:
        probe.upload_from_string(b"", retry=gcs_retry())
        probe.delete(retry=gcs_retry())
    except gcs_errors.GoogleAPIError as error:
        raise PreflightError(
            f"The backup bucket {target.bucket!r} of target {target.name!r} refuses writes ({error}); "
            "grant the worker's service account objectCreator and objectViewer on it.",
            transient=True,
        ) from None


def take_backup(target: DatabaseTarget, run_id: str, read_back: bool = False) -> Backup:
    """pg_dump of the target streamed to GCS, read whole by pg_restore on its way up, and verified by the checksum
    GCS stored; with read_back, also downloaded again and read whole. A second backup of the same state by the same
    flow run (`run_id`; "" outside one) is the first one: a re-run after a crash reuses it."""
    started = time.monotonic()
    bucket = gcs_client(target.gcp_credentials).bucket(target.bucket)
    with backup_running(target, wait_s=target.max_lock_wait_s):
        with exported_snapshot(target) as (conn, snapshot), ThreadPoolExecutor(1) as counter:
            state = migration_state(conn)
            for existing in list_backups(target) if run_id else []:
                if existing.flow_run_id == run_id and existing.migration_state == state:
                    return existing  # this flow run's backup of this very state: a re-run after a crash
            facts = database_facts(conn)
            counted = counter.submit(row_counts, conn)  # while pg_dump streams: both read the same snapshot
            created_at = datetime.now(UTC)
            blob = bucket.blob(_object_name(target, facts["database"], created_at, run_id))
            blob.metadata = _metadata(target.name, facts, created_at, run_id, state)
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


def _object_name(target: DatabaseTarget, database: str, created_at: datetime, run_id: str) -> str:
    """PREFIX/TARGET/DATABASE/TIME-RUN.dump.zst: names sort by time."""
    return f"{target.prefix}/{target.name}/{database}/{created_at:%Y%m%dT%H%M%S.%fZ}-{run_id[:8] or 'adhoc'}.dump.zst"


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


class Streamer:
    """A backup stream process (dbpromote/backup_stream.py) and when it last answered; its stderr in a file, which
    never fills as a pipe would while it waits for its next request."""

    def __init__(self):
        self.stderr = tempfile.TemporaryFile()
        self.env = dict(os.environ)  # what it started with: a test's fault injection changes it
        self.process = subprocess.Popen(
            [sys.executable, "-m", STREAMER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            env=self.env | {PARENT_PID: str(os.getpid())},
            text=True,
        )
        self.idle_since = time.monotonic()

    def usable(self) -> bool:
        """Alive, started with this environment, and idle well within backup_stream.IDLE_S."""
        fresh = time.monotonic() - self.idle_since < IDLE_S / 2
        return fresh and self.process.poll() is None and self.env == os.environ

    def end(self) -> str:
        """Ended (killed if it still runs); the end of what it wrote to stderr."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        for pipe in (self.process.stdin, self.process.stdout):
            with contextlib.suppress(OSError):
                pipe.close()
        self.stderr.seek(0)
        tail = self.stderr.read()[-2000:].decode(errors="replace")
        self.stderr.close()
        return tail


class Streamers(threading.local):
    """The idle backup stream of this thread, kept for its next backup (a lane's next member). Per thread: the
    kernel ends a stream with the thread that started it (lifeline.end_with_parent), so only that thread uses it."""

    def __init__(self):
        self.idle: Streamer | None = None

    def take(self) -> Streamer:
        idle, self.idle = self.idle, None
        if idle is not None and idle.usable():
            return idle
        if idle is not None:
            idle.end()
        return Streamer()

    def keep(self, streamer: Streamer) -> None:
        streamer.idle_since = time.monotonic()
        self.idle = streamer


STREAMERS = Streamers()


def _stream_dump(target: DatabaseTarget, blob: Blob, database_size: int, snapshot: str) -> tuple[str, int]:
    """pg_dump into the object, in dbpromote/backup_stream.py's own process (this thread's, kept for its next
    backup once this one streamed); the CRC32C (base64) and size of what was sent. No object remains on failure."""
    request = StreamRequest(
        bucket=blob.bucket.name,
        object_name=blob.name,
        metadata=blob.metadata,
        snapshot=snapshot,
        chunk_size=CHUNK_SIZE,
        zstd_level=ZSTD_LEVEL,
        credentials_block=target.gcp_credentials,
        libpq=target.conninfo.libpq_env(),
    )
    progress = BackupProgress(database_size, blob.name)
    streamer = STREAMERS.take()
    outcome: Streamed | StreamFailed | None = None
    try:
        streamer.process.stdin.write(request.model_dump_json() + "\n")
        streamer.process.stdin.flush()
        while outcome is None and (line := streamer.process.stdout.readline()):
            message = STREAM_ANSWER.validate_json(line)
            if isinstance(message, Progress):
                progress.update(message.dumped)
            else:
                outcome = message
    except BrokenPipeError:
        pass  # it died; said below
    finally:
        if isinstance(outcome, Streamed):
            STREAMERS.keep(streamer)
        else:
            stderr = streamer.end()
    if isinstance(outcome, Streamed):
        progress.done()
        return outcome.crc32c, outcome.size
    url = target.url.get_secret_value()
    if outcome is None:
        raise BackupError(
            f"The backup stream to gs://{blob.bucket.name} stopped unexpectedly (exit {streamer.process.returncode}: "
            f"{redact(stderr.strip()[-300:], url, target.conninfo.password) or 'no output'}); nothing was migrated: "
            "run again."
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


def backup_objects(target: DatabaseTarget) -> tuple[list[Backup], list[Blob]]:
    """The verified backups of a target, newest first, and its dumps never marked verified."""
    blobs = gcs_client(target.gcp_credentials).list_blobs(
        target.bucket, prefix=f"{target.prefix}/{target.name}/", retry=gcs_retry()
    )
    verified, unverified = [], []
    for blob in blobs:
        if (blob.metadata or {}).get("verified") == "true":
            verified.append(Backup.from_blob(blob))
        elif blob.name.endswith(".dump.zst"):
            unverified.append(blob)
    return sorted(verified, key=lambda backup: backup.created_at, reverse=True), unverified


def list_backups(target: DatabaseTarget) -> list[Backup]:
    """The verified backups of a target, newest first; objects not marked verified are never listed."""
    return backup_objects(target)[0]


def read_manifest(backup: Backup, target: DatabaseTarget) -> Manifest:
    blob = gcs_client(target.gcp_credentials).bucket(backup.bucket).blob(backup.manifest_name)
    try:
        return Manifest.model_validate_json(blob.download_as_bytes(retry=gcs_retry()))
    except gcs_errors.NotFound:
        raise RestoreError(
            f"The backup {backup.uri} has no manifest ({backup.manifest_name}), so a restore of it cannot be "
            "checked; restore another backup or take a new one with `dbpromote backup TARGET`."
        ) from None


def find_backup(target: DatabaseTarget, uri: str = "") -> Backup:
    """The verified backup of a target named by `uri` (its gs:// URI or object name), or its newest when empty."""
    backups = list_backups(target)
    if not uri:
        if not backups:
            raise BackupError(
                f"Target {target.name!r} has no verified backup under "
                f"gs://{target.bucket}/{target.prefix}/{target.name}/; take one with `dbpromote backup {target.name}`.",
                transient=False,
            )
        return backups[0]
    for backup in backups:
        if uri in (backup.uri, backup.object_name):
            return backup
    raise BackupError(
        f"{uri} is not a verified backup of target {target.name!r}; list them with `dbpromote backups {target.name}`.",
        transient=False,
    )


def delete_backup(bucket, object_name: str) -> None:
    """A backup and its manifest; what is already gone is fine."""
    for name in (object_name, manifest_name(object_name)):
        with contextlib.suppress(gcs_errors.NotFound):
            bucket.blob(name).delete(retry=gcs_retry())


def read_back_into(blob: Blob, restore_args: list[str], env: dict[str, str]) -> Readback:
    """Stream the stored object through zstd into `pg_restore RESTORE_ARGS`, reading (and checksumming) every byte.

    One streamed GET (resumed from the last byte received if the connection breaks) rather than ranged chunks:
    a request per chunk costs a round trip each on GCS, and the emulator re-reads the whole object for each.
    """
    feed = RestoreFeed(restore_args, env)
    try:
        # Our own CRC32C is compared with the recorded one by the caller: no second checksum here.
        blob.download_to_file(feed, raw_download=True, checksum=None, retry=gcs_retry())
    finally:
        readback = feed.finish()
    return readback
