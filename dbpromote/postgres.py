"""PostgreSQL as every step reaches it: the migration role's connection, its libpq environment, catalog reads."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import psycopg
from psycopg import sql

from dbpromote.config import DatabaseTarget
from dbpromote.errors import PreflightError, redact


def connect(target: DatabaseTarget, **kwargs) -> psycopg.Connection:
    """A connection as the target's migration role, or a PreflightError naming what to fix."""
    url = target.url.get_secret_value()
    try:
        return psycopg.connect(url, connect_timeout=10, **kwargs)
    except psycopg.OperationalError as error:
        reason = redact(str(error).strip().splitlines()[-1] if str(error).strip() else repr(error), url)
        if "password authentication failed" in reason or "no password supplied" in reason:
            fix = f"correct the credentials with `dbpromote target add {target.name} --url URL`"
        elif "does not exist" in reason:
            fix = f"create the database or correct its name with `dbpromote target add {target.name} --url URL`"
        else:
            fix = "check the host and port in its URL and that the server is running and reachable"
        transient = fix.startswith("check the host")
        raise PreflightError(
            f"Cannot connect to target {target.name!r} ({reason}); {fix}.", transient=transient
        ) from None
    except psycopg.ProgrammingError as error:
        raise PreflightError(
            f"The URL of target {target.name!r} is not a valid PostgreSQL URL ({redact(str(error), url)}); "
            f"fix it with `dbpromote target add {target.name} --url postgresql://USER:PASSWORD@HOST:PORT/DB`."
        ) from None


def database_facts(conn: psycopg.Connection) -> dict:
    version, database, size = conn.execute(
        "SELECT current_setting('server_version'), current_database(), pg_database_size(current_database())"
    ).fetchone()
    return {"server_version": version, "database": database, "size_bytes": size}


def libpq_env(target: DatabaseTarget) -> dict[str, str]:
    """The environment with the target's connection as PG* variables: a password never goes on a command line,
    where `ps` shows it."""
    return os.environ | target.conninfo.libpq_env()


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
def server_connection(target: DatabaseTarget) -> Iterator[psycopg.Connection]:
    """A connection to the target's server outside its database (CREATE, DROP and RENAME DATABASE run there)."""
    with connect(target.on_database("postgres"), autocommit=True) as conn:
        yield conn
