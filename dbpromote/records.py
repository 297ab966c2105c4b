"""Audit records: JSON documents beside a target's backups in the bucket (approvals, promotions, rollbacks, the
steps of each promotion, kept under its id, the files of the migrations applied, drift reports)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from dbpromote.config import DatabaseTarget
from dbpromote.gcs import gcs_client, gcs_retry

# "migrations": the hash of each migration file as applied; "drift": each drift check's report, under its run;
# "fixes": each data fix's facts (its rows' before-images are beside, under before-images/).
KINDS = ("approvals", "promotions", "rollbacks", "restores", "steps", "migrations", "drift", "fixes")


def write_record(
    target: DatabaseTarget, target_name: str, kind: str, flow_run_id: str, record: dict, scope: str = ""
) -> str:
    """Store one record under PREFIX/TARGET/KIND/[SCOPE/]; its URI. Names sort by time, so the newest is the last."""
    assert kind in KINDS, kind
    stamp = f"{datetime.now(UTC):%Y%m%dT%H%M%S.%fZ}-{flow_run_id[:8] or 'adhoc'}.json"
    name = _folder(target, target_name, kind, scope) + stamp
    blob = gcs_client().bucket(target.bucket).blob(name)
    blob.upload_from_string(json.dumps(record, indent=2), content_type="application/json", retry=gcs_retry())
    return f"gs://{target.bucket}/{name}"


def read_records(target: DatabaseTarget, target_name: str, kind: str, scope: str = "") -> list[dict]:
    """Every record of a kind (in a scope) for a target, newest first."""
    assert kind in KINDS, kind
    prefix = _folder(target, target_name, kind, scope)
    blobs = gcs_client().list_blobs(target.bucket, prefix=prefix, retry=gcs_retry())
    ordered = sorted(blobs, key=lambda blob: blob.name, reverse=True)
    return [
        json.loads(blob.download_as_bytes(retry=gcs_retry())) | {"recorded_at": _when(blob.name)} for blob in ordered
    ]


def _when(name: str) -> str:
    """When a record was written, from its name (YYYYMMDDTHHMMSS.ffffffZ-RUN.json), as ISO 8601."""
    stamp = name.rsplit("/", 1)[-1].split("-", 1)[0]
    try:
        return datetime.strptime(stamp, "%Y%m%dT%H%M%S.%fZ").replace(tzinfo=UTC).isoformat()
    except ValueError:
        return ""


def _folder(target: DatabaseTarget, target_name: str, kind: str, scope: str) -> str:
    return f"{target.prefix}/{target_name}/{kind}/" + (f"{scope}/" if scope else "")


def newest_promotion_backup(target: DatabaseTarget, target_name: str) -> str:
    """The backup the newest successful promotion of a target took before changing it ('' when there is none)."""
    for record in read_records(target, target_name, "promotions"):
        if record.get("backup"):
            return record["backup"]
    return ""
