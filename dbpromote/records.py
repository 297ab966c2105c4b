"""Audit records: JSON documents beside a target's backups in the bucket (approvals, promotions, rollbacks, the
steps of each promotion, kept under its id, the files of the migrations applied, drift reports)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from google.api_core import exceptions as gcs_errors

from dbpromote.config import DatabaseTarget
from dbpromote.gcs import gcs_client, gcs_retry

# "migrations": the hash of each migration file as applied; "drift": each drift check's report, under its run;
# "fixes": each data fix's facts (its rows' before-images are beside, under before-images/).
KINDS = ("approvals", "promotions", "rollbacks", "restores", "steps", "migrations", "drift", "fixes", "fleet")


def write_record(target: DatabaseTarget, kind: str, flow_run_id: str, record: dict, scope: str = "") -> str:
    """Store one record under PREFIX/TARGET/KIND/[SCOPE/]; its URI. Names sort by time, so the newest is the last."""
    assert kind in KINDS, kind
    stamp = f"{datetime.now(UTC):%Y%m%dT%H%M%S.%fZ}-{flow_run_id[:8] or 'adhoc'}.json"
    name = _folder(target, kind, scope) + stamp
    blob = gcs_client(target.gcp_credentials).bucket(target.bucket).blob(name)
    blob.upload_from_string(json.dumps(record, indent=2), content_type="application/json", retry=gcs_retry())
    return f"gs://{target.bucket}/{name}"


def read_records(target: DatabaseTarget, kind: str, scope: str = "") -> list[dict]:
    """Every record of a kind (in a scope) for a target, newest first."""
    assert kind in KINDS, kind
    prefix = _folder(target, kind, scope)
    blobs = gcs_client(target.gcp_credentials).list_blobs(target.bucket, prefix=prefix, retry=gcs_retry())
    names = sorted((blob.name for blob in blobs), reverse=True)
    # Read by name: a listed object's media link names the host it was written through (a proxy, say).
    bucket = gcs_client(target.gcp_credentials).bucket(target.bucket)
    return [
        json.loads(bucket.blob(name).download_as_bytes(retry=gcs_retry())) | {"recorded_at": _when(name)}
        for name in names
    ]


def record_migration_files(
    target: DatabaseTarget, run_id: str, files: dict[str, str], reconciled: bool = False
) -> None:
    """The hash of each migration file a run applied (or recorded as applied): a record for the audit, and the
    target's file ledger (one object, label -> hash and when) that a drift check reads in one request."""
    record = {"flow_run_id": run_id, "files": files} | ({"reconciled": True} if reconciled else {})
    write_record(target, "migrations", run_id, record)
    ledger = read_migration_files(target)
    now = datetime.now(UTC).isoformat()
    ledger |= {label: {"sha256": sha, "recorded_at": now, "flow_run_id": run_id} for label, sha in files.items()}
    blob = gcs_client(target.gcp_credentials).bucket(target.bucket).blob(_ledger(target))
    blob.upload_from_string(json.dumps(ledger, indent=2), content_type="application/json", retry=gcs_retry())


def read_migration_files(target: DatabaseTarget) -> dict[str, dict]:
    """The target's file ledger: each migration dbpromote applied there, its file's hash then and when."""
    blob = gcs_client(target.gcp_credentials).bucket(target.bucket).blob(_ledger(target))
    try:
        return json.loads(blob.download_as_bytes(retry=gcs_retry()))
    except gcs_errors.NotFound:
        return {}


def _ledger(target: DatabaseTarget) -> str:
    # One promotion, fix, restore or rollback of a target at a time (check_not_held): one writer of its ledger.
    return f"{target.prefix}/{target.name}/migration-files.json"


def _when(name: str) -> str:
    """When a record was written, from its name (YYYYMMDDTHHMMSS.ffffffZ-RUN.json), as ISO 8601."""
    stamp = name.rsplit("/", 1)[-1].split("-", 1)[0]
    try:
        return datetime.strptime(stamp, "%Y%m%dT%H%M%S.%fZ").replace(tzinfo=UTC).isoformat()
    except ValueError:
        return ""


def _folder(target: DatabaseTarget, kind: str, scope: str) -> str:
    return f"{target.prefix}/{target.name}/{kind}/" + (f"{scope}/" if scope else "")


def newest_promotion_backup(target: DatabaseTarget) -> str:
    """The backup the newest successful promotion of a target took before changing it ('' when there is none)."""
    for record in read_records(target, "promotions"):
        if record.get("backup"):
            return record["backup"]
    return ""
