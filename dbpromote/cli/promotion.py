"""Commands that start or follow a promotion, a fix, a backup, a restore or a rollback: each triggers a deployment."""

import typer

from dbpromote.cli.common import app, fail, follow, plan_here, run_deployment


@app.command("deploy")
def deploy(
    pool: str = typer.Option(
        "dbpromote",
        help="The work pool whose workers run the flows (made, of type process, "
        "when the server has none by that name; an existing one is left as it is).",
    ),
) -> None:
    """Register dbpromote's deployments (prefect.yaml's, from this installed package) and its crash detection on
    the Prefect server in use; any worker of the pool where dbpromote is installed runs them. Run it again after
    upgrading dbpromote."""
    from prefect.settings import get_current_settings

    from dbpromote.deploying import crashed_after_s, create_work_pool, deploy_flows, install_crash_detection

    api = get_current_settings().api.url
    if not api:
        fail(
            "No Prefect server is chosen and there is no local stack; point PREFECT_API_URL (or your Prefect "
            "profile: `prefect profile use NAME`) at your server, or start the local stack with `dbpromote stack up`."
        )
    silent_s = crashed_after_s()
    if create_work_pool(api, pool, replace=False):
        typer.echo(f"work pool {pool} created (process); start a worker: prefect worker start --pool {pool}")
    for name in deploy_flows(api, pool):
        typer.echo(f"deployed {name}")
    install_crash_detection(api, silent_s)
    typer.echo(f"crash detection installed (a run silent for {silent_s} s is marked Crashed)")


@app.command("promote")
def promote(
    project: str = typer.Option(..., help="The project block, e.g. tenant-backend."),
    through: str = typer.Option(..., help="Targets in order, staging first: staging,production."),
    to: str = typer.Option("", help="APP:MIGRATION to stop at; default: every leaf."),
    wait: bool = typer.Option(False, help="Wait until the run ends (approval included)."),
    until_paused: bool = typer.Option(False, "--until-paused", help="Wait until the run waits for approval."),
    rehearse: bool = typer.Option(
        False, help="Run each later environment's plan first on a copy of its newest backup (on staging's server)."
    ),
    rehearsal_slow_s: float = typer.Option(60, help="A migration slower than this on the rehearsal is a risk."),
    skip_divergent: bool = typer.Option(
        False, "--skip-divergent", help="Leave out (and report) a group's members at another state than staging."
    ),
    deploy_wait_on_staging: bool = typer.Option(
        True, help="Wait for the app deploy between staging's two phases too (off: staging deploys itself)."
    ),
    now: bool = typer.Option(
        False, "--now", help="Do not wait for the targets' maintenance windows (with --reason, kept in the journal)."
    ),
    reason: str = typer.Option("", help="Why --now: the step cannot wait for its window."),
) -> None:
    """Trigger the promote deployment; prints the run's UI URL. A name in --through may be a group's."""
    from dbpromote.promotion import check_promotion_input
    from dbpromote.runs import trigger

    if now != bool(reason.strip()):
        fail(
            "--now needs --reason TEXT: say why the step cannot wait for its maintenance window (it is kept in the "
            "promotion's journal)."
            if now
            else "--reason goes with --now (a promotion outside its maintenance windows); add --now, or leave it out."
        )
    targets = [name.strip() for name in through.split(",") if name.strip()]
    check_promotion_input(project, targets, to)
    if to:
        plan_here(project, targets[0], to)  # an unknown or a backwards --to, refused now
    parameters = {"project": project, "through": targets, "to": to}
    if rehearse:
        parameters |= {"rehearse": True, "rehearsal_slow_s": rehearsal_slow_s}
    if skip_divergent:
        parameters |= {"skip_divergent": True}
    if not deploy_wait_on_staging:
        parameters |= {"deploy_wait_on_staging": False}
    if now:
        parameters |= {"now_reason": reason.strip()}
    follow(trigger("promote/promote", parameters), wait, until_paused)


@app.command("fix")
def fix(
    project: str = typer.Option(..., help="The project block, e.g. tenant-backend (its verify scripts run after)."),
    through: str = typer.Option(..., help="Targets in order, staging first: staging,production."),
    script: str = typer.Option(..., help="A .sql file (statements) or a .py file (run with Django set up)."),
    tenant: list[str] | None = typer.Option(
        None, help="Run as the application role for this tenant, RLS confining it (repeat); none: unscoped."
    ),
    expect_rows: str = typer.Option("", help="MIN..MAX rows the fix may change on each target, e.g. 1..50."),
    purpose: str = typer.Option("", help="Why: recorded and shown to the approver."),
    batch_size: int = typer.Option(
        0, help="Run one UPDATE or DELETE in keyset batches of this many rows, each committed on its own."
    ),
    wait: bool = typer.Option(False, help="Wait until the run ends (approval included)."),
    until_paused: bool = typer.Option(False, "--until-paused", help="Wait until the run waits for approval."),
) -> None:
    """A data fix, staging first: dry run and counts, bounds, approval, backup, before-images, verify after."""
    from pathlib import Path

    from dbpromote.config import load_project
    from dbpromote.fixes import check_fix_input
    from dbpromote.models.fix import FixScript, RowBounds
    from dbpromote.runs import trigger

    path = Path(script)
    if not path.is_file():
        fail(f"The fix script {script} does not exist; give the path of a .sql or .py file.")
    fix_script = FixScript(name=path.name, source=path.read_text(), purpose=purpose)
    RowBounds.parse(expect_rows)
    load_project(project)
    targets = [name.strip() for name in through.split(",") if name.strip()]
    check_fix_input(targets, fix_script, batch_size, expect_rows, tenant or [])
    parameters = {"project": project, "through": targets, "script": fix_script.source, "script_name": path.name}
    parameters |= {"tenants": tenant or [], "expect_rows": expect_rows, "purpose": purpose, "batch_size": batch_size}
    follow(trigger("fix/fix", parameters), wait, until_paused)


@app.command("fix-undo")
def fix_undo(
    run_id: str,
    target: str = typer.Option(..., help="The target whose rows the fix changed."),
    wait: bool = typer.Option(False, help="Wait until the run ends (approval included)."),
) -> None:
    """Put back the rows a fix changed on a target, from its before-images (refused if one changed since)."""
    from dbpromote.config import load_target
    from dbpromote.fixes import fix_to_undo
    from dbpromote.runs import refuse_if_held

    refuse_if_held([target])  # first: a held target is the reason that stands whatever the record says
    fix_to_undo(load_target(target), run_id)
    run_deployment("fix-undo/fix-undo", {"fix_run": run_id, "target": target}, wait)


@app.command("resume")
def resume(
    run_id: str,
    wait: bool = typer.Option(False, help="Wait until the run ends (approval included)."),
    until_paused: bool = typer.Option(False, "--until-paused", help="Wait until the run waits for approval."),
) -> None:
    """Carry on a promotion or a fix whose run crashed, failed or was cancelled: what it did is not done again, an
    approval it recorded stands, a target left part-way continues after a fresh backup."""
    from dbpromote.runs import resume_run

    follow(resume_run(run_id), wait, until_paused)


@app.command("pending")
def pending() -> None:
    """Runs waiting for approval (promotions, restores, rollbacks), for the app deploy between a promotion's two
    phases or for a maintenance window: id, what waits, what for, UI URL."""
    from dbpromote.runs import pending_approvals, run_url, waits_for, window_opens

    for run in pending_approvals():
        what = {"deploy": "waits for the app deploy", "approval": "waits for approval"}.get(waits_for(run), "")
        what = what or f"runs in the window starting {window_opens(run):%Y-%m-%d %H:%M} UTC"
        typer.echo(f"{run.id}  {run.name}  {what}  {run_url(run.id)}")


@app.command("runs")
def runs(every: bool = typer.Option(False, "--all", help="Ended runs too (the newest 200).")) -> None:
    """dbpromote's runs that have not ended (one whose process died is marked Crashed within two minutes and
    leaves this list; `runs --all` shows it): id, flow, targets, state, age."""
    from datetime import UTC, datetime

    from dbpromote.runs import NOT_FINAL, flow_runs, run_targets

    now = datetime.now(UTC)
    for run, flow in flow_runs(None if every else NOT_FINAL):
        age = int((now - run.created).total_seconds() // 60)
        state = run.state.name if run.state else "?"
        typer.echo(f"{run.id}  {flow:<14} {','.join(run_targets(run)):<28} {state:<10} {age} min")


@app.command("cancel")
def cancel(run_id: str, reason: str = typer.Option(..., help="Why; recorded in the run's final state.")) -> None:
    """End a run that must not go on (one whose worker died, one nobody will approve)."""
    from dbpromote.runs import cancel_run

    if not reason.strip():
        fail("--reason is blank; say why the run is cancelled, it is recorded.")
    state = cancel_run(run_id, reason.strip())
    typer.echo(f"{run_id} {state.name if state else '?'}: {reason.strip()}")


@app.command("backup")
def backup(
    target: str,
    wait: bool = typer.Option(False, help="Wait for the verified backup."),
    read_back: bool = typer.Option(
        False, "--read-back", help="Also download the stored backup and read it whole (it is read as it uploads)."
    ),
) -> None:
    """Take a verified backup of a target now (through the backup deployment)."""
    from dbpromote.config import load_target

    load_target(target)
    run_deployment("backup/backup", {"targets": [target]} | ({"read_back": True} if read_back else {}), wait)


@app.command("restore")
def restore(
    target: str,
    backup: str = typer.Option("", help="gs:// URI or object name from `dbpromote backups TARGET`; default: newest."),
    swap: bool = typer.Option(True, help="--no-swap leaves the restored database beside the target's."),
    wait: bool = typer.Option(False, help="Wait until the run ends (approval included)."),
) -> None:
    """Restore a verified backup over a target: into a new database, checked, then swapped in (old one kept)."""
    from dbpromote.backups import find_backup
    from dbpromote.config import load_target
    from dbpromote.runs import refuse_if_held

    if swap:
        refuse_if_held([target])  # before the backup is looked for: a held target is the reason that stands
    chosen = find_backup(load_target(target), backup)
    typer.echo(f"restoring {chosen.uri}")
    run_deployment("restore/restore", {"target": target, "backup": chosen.uri, "swap": swap}, wait)


@app.command("rollback")
def rollback(
    target: str,
    project: str = typer.Option(..., help="The project block, e.g. tenant-backend."),
    backup: str = typer.Option("", help="Return to this backup's migration state; default: the newest promotion's."),
    wait: bool = typer.Option(False, help="Wait until the run ends (approval included)."),
) -> None:
    """Reverse migrations one at a time until the target is at a backup's migration state."""
    from dbpromote.config import load_project, load_target

    load_project(project)
    load_target(target)
    run_deployment("rollback/rollback", {"project": project, "target": target, "backup": backup}, wait)
