"""A backup as the bucket holds it, the manifest it was taken with, and what a restore or retention made of it."""

from __future__ import annotations

import json

from google.cloud.storage import Blob
from pydantic import BaseModel

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


class Restored(BaseModel):
    """A backup restored into a database and checked against what the backup recorded."""

    backup: Backup
    target: str
    database: str
    tables: int
    rows: int
    migration_state: list[tuple[str, str]]
    duration_s: float
    replaced: str = ""

    @classmethod
    def from_manifest(cls, backup: Backup, manifest: Manifest, target: str, database: str, **fields) -> Restored:
        """A restore whose rows and migration state were found equal to what the backup recorded."""
        return cls(
            backup=backup,
            target=target,
            database=database,
            tables=len(manifest.row_counts),
            rows=sum(manifest.row_counts.values()),
            migration_state=manifest.migration_state,
            **fields,
        )


class Retained(BaseModel):
    """What retention decided for one target: every backup kept, with why, every one deleted, and every unverified
    leftover swept."""

    target: str
    kept: dict[str, str]
    deleted: list[str]
    swept: list[str] = []
