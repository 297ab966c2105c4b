"""Preflight: refuse, before anything changes, a target whose database or bucket cannot be used."""

import uuid

from google.api_core import exceptions as gcs_errors
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from dbpromote.config import DatabaseTarget
from dbpromote.errors import PreflightError, retry_if_transient
from dbpromote.gcs import gcs_client, gcs_retry
from dbpromote.postgres import connect, database_facts


@task(
    name="check-database",
    retries=2,
    retry_delay_seconds=3,
    retry_condition_fn=retry_if_transient,
    cache_policy=NO_CACHE,
)
def check_database(target: DatabaseTarget, target_name: str) -> dict:
    """The server answers with the given credentials; returns its version and the database's size."""
    with connect(target, target_name) as conn:
        return database_facts(conn)


@task(
    name="check-bucket", retries=2, retry_delay_seconds=3, retry_condition_fn=retry_if_transient, cache_policy=NO_CACHE
)
def check_bucket(target: DatabaseTarget, target_name: str) -> None:
    """The backup bucket exists and accepts writes."""
    client = gcs_client(target.gcp_credentials)
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


@task(
    name="check-not-held",
    retries=2,
    retry_delay_seconds=3,
    retry_condition_fn=retry_if_transient,
    cache_policy=NO_CACHE,
)
def check_not_held(targets: list[str]) -> None:
    """No other promotion, restore, rollback, reconciliation, fix or undo of these targets (or of a group they are
    in) is unfinished (one whose worker died included)."""
    from dbpromote.runs import refuse_if_held

    refuse_if_held(targets, excluding=flow_run.get_id())
