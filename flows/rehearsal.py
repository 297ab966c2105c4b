"""Rehearsal: a target's plan run first on a copy of its newest backup, restored on the staging server."""

from __future__ import annotations

from dbpromote.flows.parts import flow
from dbpromote.tasks.backup import backup_to_gcs
from dbpromote.tasks.migrate import after_migrating, apply_migration
from dbpromote.tasks.restore import drop_restored, restore_into_new_database

from dbpromote.backups import list_backups
from dbpromote.config import load_project, load_target
from dbpromote.models.plan import Plan
from dbpromote.models.report import Rehearsal
from dbpromote.probe import ProbeSession
from dbpromote.restores import scratch_name


@flow(name="rehearse", flow_run_name="rehearse {target} on {scratch_server}")
def rehearse_plan(project: str, target: str, scratch_server: str, plan: Plan, slow_s: float) -> Rehearsal:
    """Restore the target's newest backup holding its current state (taking one if there is none) into a scratch
    database on scratch_server's server, apply the plan there one migration at a time, drop the copy.

    Durations are those of production-sized data; a migration slower than slow_s is a risk to acknowledge.
    """
    django_project, database, server = load_project(project), load_target(target), load_target(scratch_server)
    backups = [b for b in list_backups(database) if sorted(b.migration_state) == sorted(plan.applied)]
    backup = backups[0] if backups else backup_to_gcs(database)
    scratch = scratch_name(database.database, "rehearsal")
    restore_into_new_database(server, backup, scratch)
    try:
        copy = server.on_database(scratch).named(f"{target} rehearsal")
        with ProbeSession(django_project, copy) as probe:
            results = [apply_migration(probe, copy, m) for m in plan.migrations]
            if plan.migrations:
                after_migrating(probe, copy, plan.migrations)
    finally:
        drop_restored(server, scratch)
    return Rehearsal(target=target, backup_uri=backup.uri, slow_s=slow_s, migrations=results)
