"""Preflight: refuse, before anything changes, a target whose database or bucket cannot be used."""

import uuid

import psycopg
from google.api_core import exceptions as gcs_errors
from prefect import task

from dbpromote.config import DatabaseTarget
from dbpromote.errors import PreflightError, redact, retry_if_transient
from tasks.gcs import gcs_client, gcs_retry


def connect(target: DatabaseTarget, target_name: str, **kwargs) -> psycopg.Connection:
    """A connection as the target's migration role, or a PreflightError naming what to fix."""
    url = target.url.get_secret_value()
    try:
        return psycopg.connect(url, connect_timeout=10, **kwargs)
    except psycopg.OperationalError as error:
        reason = redact(str(error).strip().splitlines()[-1] if str(error).strip() else repr(error), url)
        if "password authentication failed" in reason or "no password supplied" in reason:
            fix = f"correct the credentials with `dbpromote target add {target_name} --url URL`"
        elif "does not exist" in reason:
            fix = f"create the database or correct its name with `dbpromote target add {target_name} --url URL`"
        else:
            fix = "check the host and port in its URL and that the server is running and reachable"
        transient = fix.startswith("check the host")
        raise PreflightError(
            f"Cannot connect to target {target_name!r} ({reason}); {fix}.", transient=transient
        ) from None
    except psycopg.ProgrammingError as error:
        raise PreflightError(
            f"The URL of target {target_name!r} is not a valid PostgreSQL URL ({redact(str(error), url)}); "
            f"fix it with `dbpromote target add {target_name} --url postgresql://USER:PASSWORD@HOST:PORT/DB`."
        ) from None


@task(name="check-database", retries=2, retry_delay_seconds=3, retry_condition_fn=retry_if_transient)
def check_database(target: DatabaseTarget, target_name: str) -> dict:
    """The server answers with the given credentials; returns its version and the database's size."""
    with connect(target, target_name) as conn:
        return database_facts(conn)


def database_facts(conn: psycopg.Connection) -> dict:
    version, database, size = conn.execute(
        "SELECT current_setting('server_version'), current_database(), pg_database_size(current_database())"
    ).fetchone()
    return {"server_version": version, "database": database, "size_bytes": size}


@task(name="check-bucket", retries=2, retry_delay_seconds=3, retry_condition_fn=retry_if_transient)
def check_bucket(target: DatabaseTarget, target_name: str) -> None:
    """The backup bucket exists and accepts writes."""
    client = gcs_client()
    try:
        bucket = client.lookup_bucket(target.bucket, retry=gcs_retry())
    except gcs_errors.GoogleAPIError as error:
        raise PreflightError(
            f"The backup bucket {target.bucket!r} of target {target_name!r} cannot be read ({error}); "
            "check the credentials and the GCS endpoint.",
            transient=True,
        ) from None
    if bucket is None:
        raise PreflightError(
            f"The backup bucket {target.bucket!r} of target {target_name!r} does not exist; create it "
            f"or set another with `dbpromote target add {target_name} --bucket NAME`."
        )
    probe = bucket.blob(f"{target.prefix}/.dbpromote-write-check-{uuid.uuid4().hex}")
    try:
        probe.upload_from_string(b"", retry=gcs_retry())
        probe.delete(retry=gcs_retry())
    except gcs_errors.GoogleAPIError as error:
        raise PreflightError(
            f"The backup bucket {target.bucket!r} of target {target_name!r} refuses writes ({error}); "
            "grant the worker's service account objectCreator and objectViewer on it.",
            transient=True,
        ) from None
