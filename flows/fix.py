"""Fix: a data fix script run like a promotion, staging first; dry run, bounds, approval, backup, before-images,
verify after, on each target. And its undo."""

from __future__ import annotations

from dbpromote.flows.parts import flow
from dbpromote.tasks.backup import backup_to_gcs
from dbpromote.tasks.fix import apply_fix, dry_run_fix, undo_fix
from dbpromote.tasks.preflight import check_bucket, check_database, check_not_held
from prefect import get_run_logger
from prefect.runtime import flow_run

from dbpromote.config import DatabaseTarget, DjangoProject, load_project, load_target
from dbpromote.errors import FixError, VerificationError
from dbpromote.fixes import BeforeImages, check_fix_input, fix_to_undo
from dbpromote.models.fix import FixRun, FixScript, RowBounds, TableChanges
from dbpromote.notify import notify_failure
from dbpromote.records import read_records, write_record
from dbpromote.reporting import publish_fix
from dbpromote.reporting.forms import fix_request, undo_request
from dbpromote.verification import run_verify_scripts
from dbpromote.waits import ANSWER_POLL_S, APPROVAL_TIMEOUT_S, record_approval, wait_for_approval


@flow(name="fix", on_failure=[notify_failure], flow_run_name="fix {script_name} through {through}")
def fix(
    project: str,
    through: list[str],
    script: str,
    script_name: str = "fix.sql",
    tenants: list[str] | None = None,
    expect_rows: str = "",
    purpose: str = "",
    batch_size: int = 0,
    resume: str = "",
    approval_timeout_s: int = APPROVAL_TIMEOUT_S,
    approval_poll_s: int = ANSWER_POLL_S,
) -> list[FixRun]:
    """The seed's checklist for a `fix_*` script: on each target in order, staging first, a dry run (rolled back)
    counts what it would change, which must be within expect_rows; approval where the target requires it; a
    backup; the real run, committed only if it changes exactly what the dry run counted and after every changed
    row's before-image is in the bucket; the project's verify scripts. With tenants, the script runs as the
    application role once per tenant, so RLS confines it to them. With batch_size, one UPDATE or DELETE runs in
    keyset batches. resume: the id of a fix whose run ended unfinished; what it committed is not run again."""
    fix_script, bounds, tenants = (
        FixScript(name=script_name, source=script, purpose=purpose),
        RowBounds.parse(expect_rows),
        tenants or [],
    )
    django_project = load_project(project)
    check_fix_input(through, fix_script, batch_size, expect_rows, tenants)
    check_not_held(through)
    fix_id = resume or str(flow_run.get_id() or "adhoc")
    databases = {target: load_target(target) for target in through}
    for database in databases.values():
        check_database(database)
        check_bucket(database)
    runs = [recorded for target in through if (recorded := recorded_fix(databases[target], fix_id))]
    todo = {target: database for target, database in databases.items() if target not in {r.target for r in runs}}
    started = {target for target, database in todo.items() if BeforeImages(database, fix_id).exist()}
    # Every target's dry run first: a count out of bounds anywhere stops the fix before it commits anywhere. (A
    # target part-way through its batches counts what is left, its bounds are kept batch by batch.)
    dry = {target: dry_run_fix(db, fix_script, tenants, django_project) for target, db in todo.items()}
    for target in todo:
        get_run_logger().info("dry run on %s: %s", target, dry[target].describe())
        check_bounds(dry[target], bounds if target not in started else RowBounds())
    for target, database in todo.items():
        if target != through[0]:  # counted again now, after the targets before it: what the approver sees
            dry[target] = dry_run_fix(database, fix_script, tenants, django_project)
            check_bounds(dry[target], bounds if target not in started else RowBounds())
        if database.requires_approval and target not in started:  # one started was approved before it began
            request = fix_request(target, fix_script, dry[target], runs)
            record_approval(database, wait_for_approval(request, approval_timeout_s, approval_poll_s))
        runs.append(fix_target(django_project, database, fix_script, dry[target], bounds, fix_id, batch_size))
    publish_fix(fix_script, runs)
    get_run_logger().info("fix %s (%s) applied on %s", script_name, fix_script.hash, ", ".join(through))
    return runs


def fix_target(
    project: DjangoProject,
    database: DatabaseTarget,
    script: FixScript,
    dry: FixRun,
    bounds: RowBounds,
    fix_id: str,
    batch_size: int,
) -> FixRun:
    """On one target, approved: a backup, the real run, its record, the project's verify scripts."""
    backup = backup_to_gcs(database) if dry.rows else None
    done = apply_fix(database, script, dry.tenants, dry, bounds, project, fix_id, batch_size)
    done.backup = backup.uri if backup else ""
    record_fix(database, database.name, script, done, fix_id)
    failed = [f"{c.name} ({c.detail})" for c in run_verify_scripts(project, database) if not c.passed]
    if failed:
        raise VerificationError(
            f"After the fix, {database.name} fails its verify scripts: {', '.join(failed)}; no later target was "
            f"touched: undo it with `dbpromote fix-undo {fix_id} --target {database.name}` or correct the data."
        )
    return done


def recorded_fix(database: DatabaseTarget, fix_id: str) -> FixRun | None:
    """The fix as recorded done on a target by an earlier run of it."""
    for record in read_records(database, "fixes"):
        if record["flow_run_id"] == fix_id and "script" in record:
            fields = {f: record[f] for f in ("tenants", "before_images", "backup")}
            tables = [TableChanges(**table) for table in record["tables"]]
            return FixRun(target=database.name, script_hash=record["script_hash"], tables=tables, dry=False, **fields)
    return None


def check_bounds(dry: FixRun, bounds: RowBounds) -> None:
    if not bounds.admits(dry.rows):
        raise FixError(
            f"The fix would change {dry.rows} rows on {dry.target}, outside --expect-rows {bounds}; nothing was "
            "committed on any target: check the script (the dry run's counts per table are in the run's log), or "
            "give the bounds you expect."
        )


def record_fix(database, target: str, script: FixScript, done: FixRun, fix_id: str) -> None:
    """The fix done on a target, under the fix's id (its first run's, however many runs carried it on)."""
    record = {"flow_run_id": fix_id, "script": script.name, "script_hash": script.hash, "purpose": script.purpose}
    record |= {"source": script.source, "tenants": done.tenants, "rows": done.rows, "backup": done.backup}
    record |= {"before_images": done.before_images, "tables": [t.model_dump() for t in done.tables]}
    record |= {"batches": done.batches, "run": str(flow_run.get_id() or "")}
    write_record(database, "fixes", fix_id, record)


@flow(name="fix-undo", on_failure=[notify_failure], flow_run_name="undo fix {fix_run} on {target}")
def fix_undo(
    fix_run: str, target: str, approval_timeout_s: int = APPROVAL_TIMEOUT_S, approval_poll_s: int = ANSWER_POLL_S
) -> int:
    """Put back every row a fix changed on a target, from the before-images it saved; refused, naming the rows,
    where one changed again since. Approval first where the target requires it."""
    database = load_target(target)
    check_not_held([target])
    fix = fix_to_undo(database, fix_run)
    if database.requires_approval:
        record_approval(database, wait_for_approval(undo_request(target, fix), approval_timeout_s, approval_poll_s))
    put_back = undo_fix(database, fix_run)
    run_id = str(flow_run.get_id() or "")
    write_record(database, "fixes", run_id, {"flow_run_id": run_id, "undoes": fix_run, "rows": put_back})
    return put_back
