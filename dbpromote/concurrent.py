"""Migrations of concurrent operations (CREATE INDEX CONCURRENTLY, VALIDATE CONSTRAINT): they wait for old
snapshots by design, so they get their own lock_timeout; and an index build cancelled half-way leaves an INVALID
index behind that blocks a rerun, which is dropped before the migration runs again: only the indexes the
migration's own SQL creates, by name, and only while invalid."""

from __future__ import annotations

import re

from psycopg import sql

from dbpromote.config import DatabaseTarget
from dbpromote.models.plan import PlannedMigration
from dbpromote.postgres import connect

CONCURRENT = re.compile(r"\bCONCURRENTLY\b|\bVALIDATE\s+CONSTRAINT\b", re.I)
CREATES_INDEX = re.compile(r'CREATE\s+(?:UNIQUE\s+)?INDEX\s+CONCURRENTLY\s+(?:IF\s+NOT\s+EXISTS\s+)?"?(\w+)"?', re.I)


def is_concurrent(migration: PlannedMigration) -> bool:
    """A non-atomic migration with a concurrent operation (an atomic one cannot hold any)."""
    return not migration.atomic and any(CONCURRENT.search(statement) for statement in migration.sql)


def only_builds_indexes(migration: PlannedMigration) -> bool:
    """Every statement it runs builds an index concurrently: once its invalid ones are dropped it can run again."""
    statements = [s for s in migration.sql if s.strip() and not s.strip().startswith("--")]
    return bool(statements) and all(CREATES_INDEX.search(statement) for statement in statements)


def indexes_built(migration: PlannedMigration) -> list[str]:
    return [name for statement in migration.sql for name in CREATES_INDEX.findall(statement)]


def existing(target: DatabaseTarget, names: list[str]) -> dict[str, bool]:
    """Which of these indexes exist in the target's schema, each with whether it is valid."""
    if not names:
        return {}
    with connect(target, autocommit=True) as conn:
        rows = conn.execute(
            """
            SELECT c.relname, i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
            WHERE c.relnamespace = %s::regnamespace AND c.relname = ANY(%s)
            """,
            [target.schema_name, names],
        ).fetchall()
    return dict(rows)


def drop_invalid(target: DatabaseTarget, migration: PlannedMigration) -> list[str]:
    """Drop the INVALID indexes this migration's own SQL creates (never another); the names dropped."""
    invalid = [name for name, valid in existing(target, indexes_built(migration)).items() if not valid]
    with connect(target, autocommit=True) as conn:
        for name in invalid:
            conn.execute(
                sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(sql.Identifier(target.schema_name, name))
            )
    return invalid
