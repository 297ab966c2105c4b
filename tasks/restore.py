"""Restore as tasks: a verified backup into a new database, checked against its manifest, and only then swapped in by
name (the work in dbpromote/restores.py)."""

from prefect import task
from prefect.cache_policies import NO_CACHE

from dbpromote import restores
from dbpromote.config import DatabaseTarget
from dbpromote.errors import retry_if_transient
from dbpromote.models.backup import Backup, Restored


@task(
    name="drop-restored-database",
    retries=2,
    retry_delay_seconds=3,
    retry_condition_fn=retry_if_transient,
    cache_policy=NO_CACHE,
)
def drop_restored(target: DatabaseTarget, database: str) -> None:
    """Drop a database a restore of this tool made on the target's server (a rehearsal's, a verification's)."""
    restores.drop_restored(target, database)


@task(
    name="restore-into-new-database",
    retries=1,
    retry_delay_seconds=5,
    retry_condition_fn=retry_if_transient,
    cache_policy=NO_CACHE,
)
def restore_into_new_database(target: DatabaseTarget, backup: Backup, database: str) -> Restored:
    """The backup in a new database on the target's server, checked against its manifest; dropped on any failure."""
    return restores.restore_into_new_database(target, backup, database)


@task(name="swap-in-restored-database", cache_policy=NO_CACHE)
def swap_in(target: DatabaseTarget, backup: Backup, restored: str, disconnect_wait_s: float) -> str:
    """Rename the target's database aside and the restored one into its name, in one transaction; the previous
    database is kept (its name is returned)."""
    return restores.swap_in(target, backup, restored, disconnect_wait_s)
