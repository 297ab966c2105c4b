"""The backup before a database changes, as a task: pg_dump streamed to GCS and verified (dbpromote/backups.py)."""

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from dbpromote.backups import take_backup
from dbpromote.config import DatabaseTarget
from dbpromote.errors import retry_if_transient
from dbpromote.models.backup import Backup


@task(
    name="backup-to-gcs", retries=1, retry_delay_seconds=5, retry_condition_fn=retry_if_transient, cache_policy=NO_CACHE
)
def backup_to_gcs(target: DatabaseTarget, read_back: bool = False) -> Backup:
    """pg_dump of the target streamed to GCS and verified; a re-run of the same flow run reuses its backup."""
    return take_backup(target, str(flow_run.get_id() or ""), read_back)
