"""Restore as tasks: a verified backup into a new database, checked against its manifest, and only then swapped in by
name (the work in dbpromote/restores.py)."""

from prefect import task
from prefect.cache_policies import NO_CACHE

from dbpromote import restores
from dbpromote.errors import retry_if_transient

RETRIED = dict(retry_condition_fn=retry_if_transient, cache_policy=NO_CACHE)

drop_restored = task(name="drop-restored-database", retries=2, retry_delay_seconds=3, **RETRIED)(restores.drop_restored)
restore_into_new_database = task(name="restore-into-new-database", retries=1, retry_delay_seconds=5, **RETRIED)(
    restores.restore_into_new_database
)
# Not retried: a swap that failed part-way left the target usable as it was, and says so.
swap_in = task(name="swap-in-restored-database", cache_policy=NO_CACHE)(restores.swap_in)
