"""Restore: a verified backup into a new database, checked against its manifest, and only then swapped in by name."""

from __future__ import annotations

import contextlib
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import psycopg
from prefect.runtime import flow_run
from psycopg import sql

from dbpromote.backups import read_back_into, read_manifest
from dbpromote.config import DatabaseTarget
from dbpromote.errors import RestoreError, redact
from dbpromote.gcs import gcs_client
from dbpromote.models.backup import Backup, Manifest, Restored
from dbpromote.postgres import connect, libpq_env, migration_state, row_counts, server_connection

# Every database dbpromote creates carries this comment; it drops no database without it.
SCRATCH_MARK = "dbpromote scratch"
RESTORED_MARK = "dbpromote restored"
IDENTIFIER_MAX = 63
LIST_SETTINGS = {"search_path", "temp_tablespaces", "session_preload_libraries", "local_preload_libraries"}


def scratch_name(database: str, purpose: str) -> str:
    """A name for a database this run creates: stable within a flow run, so a re-run finds (and replaces) it."""
    run = str(flow_run.get_id() or "")[:8] or datetime.now(UTC).strftime("%H%M%S%f")
    suffix = f"_{purpose}_{run}"
    return database[: IDENTIFIER_MAX - len(suffix)] + suffix


def _comment(conn: psycopg.Connection, database: str) -> str | None:
    row = conn.execute(
        "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s", [database]
    ).fetchone()
    return None if row is None else (row[0] or "")


def drop_scratch(conn: psycopg.Connection, database: str) -> None:
    """Drop a database this tool created (it carries SCRATCH_MARK); refuse to drop anything else."""
    comment = _comment(conn, database)
    if comment is None:
        return
    if not comment.startswith(SCRATCH_MARK):
        raise RestoreError(
            f"A database named {database} exists and was not created by dbpromote; nothing was dropped: "
            "rename or drop it yourself, then run again."
        )
    conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(database)))


def create_scratch(conn: psycopg.Connection, like: str, database: str, purpose: str) -> None:
    """An empty database with `like`'s encoding and collation, marked as this tool's (replacing one a previous
    attempt of this run left)."""
    drop_scratch(conn, database)
    encoding, collate, ctype = conn.execute(
        "SELECT pg_encoding_to_char(encoding), datcollate, datctype FROM pg_database WHERE datname = %s", [like]
    ).fetchone()
    conn.execute(
        sql.SQL("CREATE DATABASE {} TEMPLATE template0 ENCODING {} LC_COLLATE {} LC_CTYPE {}").format(
            sql.Identifier(database), sql.Literal(encoding), sql.Literal(collate), sql.Literal(ctype)
        )
    )
    conn.execute(
        sql.SQL("COMMENT ON DATABASE {} IS {}").format(
            sql.Identifier(database), sql.Literal(f"{SCRATCH_MARK}: {purpose}")
        )
    )


def drop_restored(target: DatabaseTarget, database: str) -> None:
    """Drop a database a restore of this tool made on the target's server (a rehearsal's, a verification's)."""
    with server_connection(target) as conn:
        drop_scratch(conn, database)


def restore_into_new_database(target: DatabaseTarget, backup: Backup, database: str) -> Restored:
    """The backup in a new database on the target's server, checked against its manifest; dropped on any failure."""
    started = time.monotonic()
    manifest = read_manifest(backup, target)
    with server_connection(target) as conn:
        create_scratch(conn, target.database, database, f"restore of {backup.uri}")
        try:
            blob = gcs_client(target.gcp_credentials).bucket(backup.bucket).blob(backup.object_name)
            env = libpq_env(target) | {"PGDATABASE": database}
            result = read_back_into(blob, ["--exit-on-error", "--no-password", f"--dbname={database}"], env)
            if not result.ok:
                reason = redact(result.stderr, target.url.get_secret_value()) or "the stored object ended early"
                raise RestoreError(
                    f"Restoring {backup.uri} failed ({reason}); the new database was dropped and {target.name} is "
                    "as it was: restore another backup (`dbpromote backups TARGET` lists them)."
                )
            if (result.crc32c, result.size_bytes) != (manifest.crc32c, manifest.size_bytes):
                raise RestoreError(
                    f"The stored backup {backup.uri} no longer has the checksum it was taken with "
                    f"({result.crc32c}, {result.size_bytes} bytes; recorded {manifest.crc32c}, "
                    f"{manifest.size_bytes} bytes); the new database was dropped and {target.name} is as it was: "
                    "restore another backup."
                )
            check_restored(target.on_database(database), backup, manifest)
        except BaseException:
            drop_scratch(conn, database)
            raise
    duration_s = round(time.monotonic() - started, 3)
    return Restored.from_manifest(backup, manifest, target.name, database, duration_s=duration_s)


def check_restored(database_target: DatabaseTarget, backup: Backup, manifest: Manifest) -> None:
    """Row counts per table and the migration state equal what the backup recorded in its own snapshot."""

    def analyze() -> None:  # a restored database has no planner statistics until autovacuum comes by
        with connect(database_target, autocommit=True) as conn:
            conn.execute("ANALYZE")

    with ThreadPoolExecutor(1) as background, connect(database_target) as conn:
        analyzed = background.submit(analyze)  # on its own connection, while this one counts
        counts = row_counts(conn)
        state = migration_state(conn)
        analyzed.result()
    if counts != manifest.row_counts:
        differ = sorted(
            f"{table} {manifest.row_counts.get(table, 'absent')} -> {counts.get(table, 'absent')}"
            for table in set(counts) | set(manifest.row_counts)
            if counts.get(table) != manifest.row_counts.get(table)
        )
        raise RestoreError(
            f"The restore of {backup.uri} does not hold the rows the backup recorded ({'; '.join(differ[:5])}); "
            "it was dropped: restore another backup."
        )
    if state != manifest.migration_state:
        raise RestoreError(
            f"The restore of {backup.uri} does not hold the migration state the backup recorded; it was dropped: "
            "restore another backup."
        )


def restored_by_this_run(target: DatabaseTarget, backup: Backup) -> Restored | None:
    """The restore this flow run already swapped in (a re-run after a crash), described from the manifest."""
    with server_connection(target) as conn:
        comment = _comment(conn, target.database) or ""
    prefix = f"{RESTORED_MARK}: {backup.uri} by flow run {flow_run.get_id()}; previous database kept as "
    if not comment.startswith(prefix):
        return None
    return Restored.from_manifest(
        backup,
        read_manifest(backup, target),
        target.name,
        target.database,
        duration_s=0.0,
        replaced=comment.removeprefix(prefix),
    )


def swap_in(target: DatabaseTarget, backup: Backup, restored: str, disconnect_wait_s: float) -> str:
    """Rename the target's database aside and the restored one into its name, in one transaction.

    The target's sessions are given disconnect_wait_s to end, then terminated. The previous database is kept
    (its name is returned); nothing is dropped.
    """
    current = target.database
    kept = scratch_name(current, "before_restore")
    with server_connection(target) as conn:
        copy_database_properties(conn, current, restored)
        conn.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(sql.Identifier(current)))
        try:
            disconnect_sessions(conn, current, target.name, disconnect_wait_s)
            with conn.transaction():
                rename = sql.SQL("ALTER DATABASE {} RENAME TO {}")
                conn.execute(rename.format(sql.Identifier(current), sql.Identifier(kept)))
                conn.execute(rename.format(sql.Identifier(restored), sql.Identifier(current)))
                note = f"{RESTORED_MARK}: {backup.uri} by flow run {flow_run.get_id()}; previous database kept as "
                conn.execute(
                    sql.SQL("COMMENT ON DATABASE {} IS {}").format(sql.Identifier(current), sql.Literal(note + kept))
                )
        finally:
            # The kept database may be inspected; on failure, the target is usable again exactly as before.
            name = kept if _comment(conn, kept) is not None else current
            conn.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(sql.Identifier(name)))
    return kept


def disconnect_sessions(conn: psycopg.Connection, database: str, target_name: str, wait_s: float) -> None:
    """Wait for the database's sessions to end, then terminate what is left; fail naming any that survive."""
    sessions = (
        "SELECT pid, usename, application_name FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()"
    )
    deadline = time.monotonic() + wait_s
    while conn.execute(sessions, [database]).fetchone() and time.monotonic() < deadline:
        time.sleep(0.5)
    for pid, *_ in conn.execute(sessions, [database]).fetchall():
        with contextlib.suppress(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT pg_terminate_backend(%s, 5000)", [pid])
    left = conn.execute(sessions, [database]).fetchall()
    if left:
        named = ", ".join(f"pid {pid} ({user}, {app or 'no application name'})" for pid, user, app in left)
        raise RestoreError(
            f"Sessions on {target_name} could not be ended ({named}); nothing was swapped and {target_name} is as "
            "it was: stop the application or grant pg_signal_backend to the migration role, then run again."
        )


def copy_database_properties(conn: psycopg.Connection, source: str, destination: str) -> None:
    """What pg_dump leaves out without --create: the database's own settings and who may connect to it."""
    settings = conn.execute(
        """
        SELECT unnest(s.setconfig) FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase
        WHERE d.datname = %s AND s.setrole = 0
        """,
        [source],
    ).fetchall()
    for (setting,) in settings:
        name, _, value = setting.partition("=")
        # List settings are stored as written (`"$user", public`); the others as one value to quote.
        value_sql = sql.SQL(value) if name in LIST_SETTINGS else sql.Literal(value)
        try:
            conn.execute(
                sql.SQL("ALTER DATABASE {} SET {} = {}").format(
                    sql.Identifier(destination), sql.Identifier(name), value_sql
                )
            )
        except psycopg.Error as error:
            raise RestoreError(
                f"The database setting {name} of {source} cannot be given to the restored database ({error}); "
                "nothing was swapped: set it on the restored database as a superuser, or remove it, then run again."
            ) from None
    (acl,) = conn.execute("SELECT datacl IS NOT NULL FROM pg_database WHERE datname = %s", [source]).fetchone()
    if not acl:
        return  # the defaults, as the new database has them
    grants = conn.execute(
        """
        SELECT CASE a.grantee WHEN 0 THEN 'PUBLIC' ELSE a.grantee::regrole::text END, a.privilege_type
        FROM pg_database d, aclexplode(d.datacl) a WHERE d.datname = %s AND a.grantee <> d.datdba
        """,
        [source],
    ).fetchall()
    conn.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(sql.Identifier(destination)))
    for grantee, privilege in grants:  # regrole::text is already quoted as an identifier
        conn.execute(
            sql.SQL("GRANT {} ON DATABASE {} TO {}").format(
                sql.SQL(privilege), sql.Identifier(destination), sql.SQL(grantee)
            )
        )
