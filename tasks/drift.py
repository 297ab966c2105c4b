"""Drift as tasks: a target's live schema against the one its recorded migrations produce, and a migration recorded
as applied (the work in dbpromote/drift.py, its report in dbpromote/reporting/)."""

from prefect import task
from prefect.cache_policies import NO_CACHE

from dbpromote import drift
from dbpromote.errors import retry_if_transient

RETRIED = dict(retries=1, retry_delay_seconds=3, retry_condition_fn=retry_if_transient, cache_policy=NO_CACHE)


check_drift = task(name="check-drift", **RETRIED)(drift.check_drift)
fake_apply = task(name="fake-apply", **RETRIED)(drift.fake_apply)
