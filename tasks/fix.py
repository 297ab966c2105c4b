"""A guarded data fix as tasks: the dry run rolled back, the real run with every changed row's before-image kept, and
the undo (the work in dbpromote/fixes.py)."""

from prefect import task
from prefect.cache_policies import NO_CACHE

from dbpromote import fixes
from dbpromote.errors import retry_if_transient

dry_run_fix = task(
    name="dry-run-fix", retries=1, retry_delay_seconds=3, retry_condition_fn=retry_if_transient, cache_policy=NO_CACHE
)(fixes.dry_run_fix)
undo_fix = task(name="undo-fix", retries=0, cache_policy=NO_CACHE)(fixes.undo_fix)


# Not retried by Prefect: whether a failed attempt committed anything is decided from the before-images it kept.
apply_fix = task(name="apply-fix", retries=0, cache_policy=NO_CACHE)(fixes.apply_fix)
