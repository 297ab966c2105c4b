"""The backups in the bucket: listed, found by name, read back through pg_restore, deleted with their manifests."""

from __future__ import annotations

import contextlib

from google.api_core import exceptions as gcs_errors
from google.cloud.storage import Blob

from dbpromote.config import DatabaseTarget
from dbpromote.dumps import Readback, RestoreFeed
from dbpromote.errors import BackupError, RestoreError
from dbpromote.gcs import gcs_client, gcs_retry
from dbpromote.models.backup import Backup, Manifest, manifest_name


def backup_objects(target: DatabaseTarget, target_name: str) -> tuple[list[Backup], list[Blob]]:
    """The verified backups of a target, newest first, and its dumps never marked verified."""
    blobs = gcs_client(target.gcp_credentials).list_blobs(
        target.bucket, prefix=f"{target.prefix}/{target_name}/", retry=gcs_retry()
    )
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


def read_manifest(backup: Backup, target: DatabaseTarget) -> Manifest:
    blob = gcs_client(target.gcp_credentials).bucket(backup.bucket).blob(backup.manifest_name)
    try:
        return Manifest.model_validate_json(blob.download_as_bytes(retry=gcs_retry()))
    except gcs_errors.NotFound:
        raise RestoreError(
            f"The backup {backup.uri} has no manifest ({backup.manifest_name}), so a restore of it cannot be "
            "checked; restore another backup or take a new one with `dbpromote backup TARGET`."
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
