"""Migrate as tasks: exactly one migration, its run named after it, and Django's post_migrate once after a step's
migrations (the work in dbpromote/migrate.py). Not retried by Prefect: a failed migration rolled back, or (not
atomic) may have applied part of its operations; the library retries what is safe to retry (a lock not granted)."""

from prefect import task
from prefect.cache_policies import NO_CACHE

from dbpromote import migrate

apply_migration = task(
    name="apply-migration", task_run_name="{migration.label}{migration.direction}", cache_policy=NO_CACHE
)(migrate.apply_migration)

# After a step's migrations, once; not retried either: a handler of the project's that failed would fail again.
after_migrating = task(name="post-migrate", cache_policy=NO_CACHE)(migrate.after_migrating)
