"""Crashed runs as tasks: what a dead flow run's process left Running marked Crashed too, and a run marked Crashed after
it had ended given its end back (the work in dbpromote/crashes.py)."""

from prefect import task
from prefect.cache_policies import NO_CACHE

from dbpromote import crashes

RETRIED = dict(retries=2, retry_delay_seconds=3, cache_policy=NO_CACHE)

close_left_running = task(name="close-left-running", **RETRIED)(crashes.close_left_running)
undo_a_late_crash = task(name="undo-a-late-crash", **RETRIED)(crashes.undo_a_late_crash)
