"""`dbpromote`: the command-line front door; commands that change a database trigger a deployment."""

import contextlib
import json
import logging
import os
import re
import sys
from collections.abc import Iterator

import httpx
import pydantic
import typer

from dbpromote import localstack as local_stack
from dbpromote.errors import DbpromoteError

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Promote Django migrations through environments.")
stack_app = typer.Typer(no_args_is_help=True, help="The local stack: PostgreSQL x2, GCS emulator, Prefect.")
app.add_typer(stack_app, name="stack")


# Where the command's Prefect server came from, when it is not the local stack (main sets it): named in the one line
# of an error and after the output of a command that succeeded.
CHOSEN_SERVER = ""


def fail(message: str) -> None:
    typer.echo(error_line(message), err=True)
    raise typer.Exit(1)


def error_line(message: str) -> str:
    """An error's one line; with the Prefect server named when it is not the local stack (and not named already)."""
    server = f" (Prefect server: {CHOSEN_SERVER})" if CHOSEN_SERVER and CHOSEN_SERVER.split()[0] not in message else ""
    return f"error: {message}{server}"


@stack_app.command("up")
def stack_up(
    workers: int = typer.Option(1, min=1, max=16, help="Workers on the stack's work pool (a fleet runs on all)."),
    worker_limit: int = typer.Option(
        0, min=0, help="Flow runs each worker runs at once (0: no limit); the pool's other workers take the rest."
    ),
) -> None:
    """Start every component that is not running yet (a second `up` starts nothing twice)."""
    stack = local_stack.up(workers=workers, worker_limit=worker_limit)
    typer.echo(f"stack up: Prefect UI {stack.prefect_ui_url}, state in {stack.home}")
    typer.echo("the UI asks for the API's credential once: `dbpromote stack status --show-secrets` shows it")


@stack_app.command("down")
def stack_down() -> None:
    """Stop exactly what `up` started; safe to run twice and after a crash."""
    stopped = local_stack.down()
    typer.echo(f"stopped: {', '.join(stopped) or 'nothing was running'}")


@stack_app.command("status")
def stack_status(
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    show_secrets: bool = typer.Option(False, "--show-secrets", help="Working credentials (local stack only)."),
) -> None:
    """Every component with its address and health; exit code 1 when any is unhealthy."""
    from prefect.settings import get_current_settings

    report = local_stack.status(show_secrets=show_secrets)
    in_use = get_current_settings().api.url or "no Prefect server (none is set and there is no local stack)"
    local = "prefect" in local_stack.Stack.load().ports and in_use == local_stack.Stack.load().prefect_api_url
    report["prefect_in_use"] = f"the local stack's Prefect server ({in_use})" if local else in_use
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    else:
        for name, component in report["components"].items():
            where = component.get("address") or component.get("endpoint") or component.get("ui_url") or ""
            typer.echo(f"{name:<11} {'healthy' if component['healthy'] else 'DOWN':<8} {where}")
        typer.echo(f"commands use {report['prefect_in_use']}")
    raise typer.Exit(0 if report["healthy"] else 1)


@stack_app.command("reset")
def stack_reset() -> None:
    """Return both databases to the sample project's v1 state with seeded tenants; the runs that held them (a
    promotion still waiting for its approval, say) are ended first, the reason in their state."""
    from dbpromote.runs import cancel_run, holders

    for run, flow, _ in holders(list(local_stack.SERVERS)):
        cancel_run(str(run.id), "the local stack was reset: its databases are back at v1")
        typer.echo(f"ended run {run.id} ({flow}): it held the stack's databases")
    local_stack.reset()
    typer.echo("staging and production reset to v1 with seeded tenants")


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

    from dbpromote.deployments.deploy import create_work_pool, deploy_flows, install_crash_detection

    api = get_current_settings().api.url
    if not api:
        fail(
            "No Prefect server is chosen and there is no local stack; point PREFECT_API_URL (or your Prefect "
            "profile: `prefect profile use NAME`) at your server, or start the local stack with `dbpromote stack up`."
        )
    if create_work_pool(api, pool, replace=False):
        typer.echo(f"work pool {pool} created (process); start a worker: prefect worker start --pool {pool}")
    for name in deploy_flows(api, pool):
        typer.echo(f"deployed {name}")
    install_crash_detection(api)
    typer.echo("crash detection installed (a run silent for 90 s is marked Crashed)")


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
    from dbpromote.flows.promote import check_promotion_input
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
    from dbpromote.flows.fix import check_fix_input
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
    from dbpromote.flows.fix import fix_to_undo
    from dbpromote.runs import refuse_if_held

    refuse_if_held([target])  # first: a held target is the reason that stands whatever the record says
    fix_to_undo(load_target(target), target, run_id)
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


# How long --until-paused waits for the approval form: a promotion's staging step (backup, migrations, RLS proof)
# takes seconds on the sample and can take many minutes on a large database; past this the command returns (exit
# 1), the run goes on.
UNTIL_PAUSED_S = 600


def follow(run, wait: bool, until_paused: bool) -> None:
    """Print a run that may ask for approval; with until_paused, wait for its approval form; with wait, its end."""
    from dbpromote.runs import run_url, wait_for, waits_for, window_opens

    typer.echo(f"{run.id} {run_url(run.id)}")
    if until_paused:
        paused = wait_for(run.id, paused=True, timeout_s=UNTIL_PAUSED_S)
        state = paused.state
        if state.is_final():
            fail(f"The run ended {state.name} before asking for approval: {why(state, run.id)}")
        if not state.is_paused():
            fail(
                f"The run has not asked for approval within {UNTIL_PAUSED_S // 60} minutes (it is {state.name}); "
                f"it goes on: follow it at {run_url(run.id)} or with `dbpromote runs`."
            )
        if waits_for(paused) == "deploy":
            typer.echo(
                f"waiting for the app deploy between two phases; once deployed, answer in the UI: {run_url(run.id)}"
            )
            typer.echo(f"or: dbpromote deployed {run.id} --release LABEL --by YOUR_NAME")
        elif waits_for(paused) == "window":
            typer.echo(f"runs in the window starting {window_opens(paused):%Y-%m-%d %H:%M} UTC: {run_url(run.id)}")
            typer.echo(f"to run it now instead: dbpromote run-now {run.id} --by YOUR_NAME --reason TEXT")
        else:
            typer.echo(f"waiting for approval in the UI: {run_url(run.id)}")
            typer.echo(f"or: dbpromote approve {run.id} --approver YOUR_NAME --comment TEXT --acknowledge-risks")
    if wait:
        report_end(run.id)


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


@app.command("approve")
def approve(
    run_id: str,
    approver: str = typer.Option(..., help="Your name, as the target's approvers list has it."),
    comment: str = typer.Option(""),
    acknowledge_risks: bool = typer.Option(False, "--acknowledge-risks", help="Accept the plan's risky operations."),
    code: str = typer.Option("", help="Your current one-time code, where the target's approvers are enrolled."),
) -> None:
    """Approve a paused promotion, restore or rollback."""
    from dbpromote.runs import answer_approval

    approver = named_approver(approver)
    answer_approval(run_id, "approve", approver, comment, acknowledge_risks, code.strip(), code_prompt())
    typer.echo(f"approved {run_id} as {approver}")


@app.command("deployed")
def deployed(
    run_id: str,
    release: str = typer.Option(..., help="The release now serving on every instance: a tag, an image, a commit."),
    by: str = typer.Option(..., "--by", help="Your name: who deployed it (kept in the promotion's journal)."),
    comment: str = typer.Option(""),
) -> None:
    """Tell a promotion waiting between its two phases that the new release is deployed; the rest runs."""
    from dbpromote.runs import answer_wait

    if not release.strip() or not by.strip():
        fail("--release and --by must not be blank; give the release's label and your name.")
    answer_wait(run_id, "deploy", {"deployed_by": by.strip(), "release": release.strip(), "comment": comment})
    typer.echo(f"{run_id}: {release.strip()} deployed, as {by.strip()} says; the after-deploy phase runs now")


@app.command("run-now")
def run_now(
    run_id: str,
    by: str = typer.Option(..., "--by", help="Your name: who runs it outside its window (kept in the journal)."),
    reason: str = typer.Option(..., help="Why it cannot wait for its maintenance window (kept in the journal)."),
) -> None:
    """Run a promotion's step that waits for its maintenance window now, outside it."""
    from dbpromote.runs import answer_wait

    if len(reason.strip()) < 3 or not by.strip():
        fail("--reason and --by must not be blank; say why it cannot wait for its window, and who you are.")
    answer_wait(run_id, "window", {"opened_by": by.strip(), "reason": reason.strip()})
    typer.echo(f"{run_id}: runs now, outside its window, as {by.strip()} says: {reason.strip()}")


@app.command("reject")
def reject(
    run_id: str,
    approver: str = typer.Option(...),
    comment: str = typer.Option(...),
    code: str = typer.Option("", help="Your current one-time code, where the target's approvers are enrolled."),
) -> None:
    """Reject a paused promotion, restore or rollback; the target stays untouched."""
    from dbpromote.runs import answer_approval

    approver = named_approver(approver)
    answer_approval(run_id, "reject", approver, comment, False, code.strip(), code_prompt())
    typer.echo(f"rejected {run_id} as {approver}")


def code_prompt():
    """At a terminal, a prompt for the approver's one-time code, used when the run asks for one."""
    if not sys.stdin.isatty():
        return None
    return lambda: typer.prompt("Your current one-time code", hide_input=True).strip()


def named_approver(approver: str) -> str:
    """The approver's name, trimmed; a blank one is refused before anything is sent."""
    if not approver.strip():
        fail("--approver is blank; give your name as the target's approvers list has it.")
    return approver.strip()


def run_deployment(deployment: str, parameters: dict, wait: bool) -> None:
    """Start a run of a deployment and print its URL; with wait, its final state, exiting 1 unless completed."""
    from dbpromote.runs import run_url, trigger

    run = trigger(deployment, parameters)
    typer.echo(f"{run.id} {run_url(run.id)}")
    if wait:
        report_end(run.id)


def report_end(run_id) -> None:
    """Wait for the run's end; its final state, and unless it completed, why (its error sentence) and exit status 1."""
    from dbpromote.runs import wait_for

    run = wait_for(run_id)
    typer.echo(f"finished: {run.state.name if run.state else '?'}")
    if run.state and run.state.is_completed():
        raise typer.Exit(0)
    fail(why(run.state, run.id))


def why(state, run_id) -> str:
    """The sentence a run ended with: its error's message without Prefect's and the exception's prefixes."""
    from dbpromote.runs import run_url

    message = (state.message if state else "") or ""
    message = message.removeprefix("Flow run encountered an exception: ")
    message = re.sub(r"^[A-Za-z_.]*(Error|Rejected|Exception|Timeout)\w*: ", "", message).strip()
    return f"{message} (run {run_url(run_id)})" if message else f"see {run_url(run_id)}"


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
    chosen = find_backup(load_target(target), target, backup)
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


@app.command("drift")
def drift(
    target: str,
    project: str = typer.Option(..., help="The project block, e.g. tenant-backend."),
    as_json: bool = typer.Option(False, "--json", help="The report as JSON on stdout."),
) -> None:
    """Compare a target's live schema with what its applied migrations produce (through the drift deployment);
    exit 1 when they differ. Changes nothing on the target."""
    from dbpromote.config import load_project, load_target
    from dbpromote.models.drift import DriftReport
    from dbpromote.records import read_records
    from dbpromote.runs import run_url, trigger, wait_for

    load_project(project)
    database = load_target(target)
    run = trigger("drift/drift", {"project": project, "target": target})
    typer.echo(f"{run.id} {run_url(run.id)}", err=as_json)  # stdout is the JSON's alone
    wait_for(run.id)
    records = read_records(database, target, "drift", scope=str(run.id))
    if not records:  # the run ended before it could compare: why, in its sentence
        report_end(run.id)
    report = DriftReport.model_validate(records[0])
    typer.echo(report.model_dump_json(indent=2) if as_json else report.text())
    raise typer.Exit(1 if report.found else 0)


@app.command("reconcile")
def reconcile(
    target: str,
    project: str = typer.Option(..., help="The project block, e.g. tenant-backend."),
    migration: str = typer.Option(..., help="APP:NAME, the next migration, whose effect was applied by hand."),
    wait: bool = typer.Option(False, help="Wait until the run ends (approval included)."),
) -> None:
    """Record a migration applied by hand as applied (`migrate --fake`), once its effect is proven to be there."""
    from dbpromote.flows.drift import check_next
    from dbpromote.models.plan import parse_target_migration

    parse_target_migration(migration)
    answer = plan_here(project, target)
    if answer is not None:
        pending = [f"{m.app}.{m.name}" for m in answer.migrations]
        check_next(pending, [f"{a}.{n}" for a, n in answer.applied], migration.replace(":", ".", 1), target)
    run_deployment("reconcile/reconcile", {"project": project, "target": target, "migration": migration}, wait)


def plan_here(project: str, target: str, to: str = ""):
    """The target's plan (the probe's answer) asked from this terminal, so that a migration named wrong is refused
    before any run exists; None when the project's folder is not on this machine (the run asks it then)."""
    from pathlib import Path

    from dbpromote.config import load_project, load_target
    from dbpromote.probe import run_probe
    from dbpromote.tasks.plan import plan_answer

    django_project, database = load_project(project), load_target(target)
    if not (Path(django_project.path) / "manage.py").is_file():
        return None
    return plan_answer(run_probe(django_project, database, "plan", "--to", to), django_project, target, to)


@app.command("check")
def check(
    project: str = typer.Option(..., help="A project block, or a folder holding manage.py (with --settings)."),
    against: str = typer.Option(
        ..., help="A target block; with DBPROMOTE_DATABASE_URL set, just the name to report it under."
    ),
    settings: str = typer.Option("", help="DJANGO_SETTINGS_MODULE, when --project is a folder."),
    python: str = typer.Option("", help="The project's interpreter, when --project is a folder (default: this one)."),
    allow_risks: bool = typer.Option(
        False, "--allow-risks", help="List lint risks (to acknowledge at approval) without failing on them."
    ),
    as_json: bool = typer.Option(False, "--json", help="The findings as JSON on stdout."),
    previous_code: str = typer.Option(
        "",
        help="The running release's own tree (a folder holding its manage.py): its models are judged instead of "
        "the migration state at the target's applied migrations.",
    ),
    previous_python: str = typer.Option("", help="The interpreter of --previous-code (default: the project's)."),
) -> None:
    """For CI on a pull request: plan against a target, lint, drift and history, as markdown for a PR comment;
    exit 1 on a blocking finding. Given a folder and DBPROMOTE_DATABASE_URL it needs no Prefect server."""
    from pathlib import Path

    from dbpromote.check import check as run_check
    from dbpromote.config import DatabaseTarget, DjangoProject, load_project, load_target
    from dbpromote.conninfo import Conninfo

    if (Path(project) / "manage.py").is_file():
        settings = settings or os.environ.get("DJANGO_SETTINGS_MODULE", "")
        if not settings:
            fail(f"{project} is a folder: name its settings module with --settings, e.g. --settings mysite.settings.")
        django_project = DjangoProject(path=str(Path(project).resolve()), settings_module=settings, python=python)
    elif Path(project).is_dir() or "/" in project:
        fail(
            f"{project} holds no manage.py; give the folder that holds the project's manage.py, or the name of a "
            "project registered with `dbpromote project add`."
        )
    else:
        django_project = load_project(project)
    url = os.environ.get("DBPROMOTE_DATABASE_URL", "")
    if url:
        Conninfo(url)
        target = DatabaseTarget(url=url)
    else:
        target = load_target(against)
    previous = None
    if previous_code:
        if not (Path(previous_code) / "manage.py").is_file():
            fail(f"--previous-code {previous_code} holds no manage.py; give the folder of the previous release's tree.")
        previous = django_project.model_copy(
            update={"path": str(Path(previous_code).resolve()), "python": previous_python or django_project.python}
        )
    report = run_check(django_project, project, target, against, allow_risks, records=not url, previous_code=previous)
    if as_json:
        typer.echo(json.dumps(report.model_dump(mode="json") | {"blocking": report.blocking}, indent=2))
    else:
        typer.echo(report.markdown())
    raise typer.Exit(1 if report.blocking else 0)


@app.command("journal")
def journal(
    target: str,
    since: str = typer.Option("", help="From this date (YYYY-MM-DD) or time on."),
    as_markdown: bool = typer.Option(False, "--markdown", help="As the migration notes a team keeps by hand."),
) -> None:
    """Every intervention on a target, newest first: promotions, fixes, restores, rollbacks, reconciliations."""
    from dbpromote.config import load_target
    from dbpromote.interventions import interventions, markdown

    if since and not re.fullmatch(r"\d{4}-\d{2}-\d{2}([T ][\d:.+Z-]*)?", since):
        fail(f"--since {since!r} is not a date; write it as YYYY-MM-DD, e.g. --since 2026-11-01.")
    found = interventions(load_target(target), target, since)
    typer.echo(markdown(target, found) if as_markdown else "\n".join(i.line() for i in found) or "nothing recorded")


@app.command("backups")
def backups(target: str) -> None:
    """The verified backups of a target, newest first: time, size, URI, migration state."""
    from dbpromote.backups import list_backups
    from dbpromote.config import load_target

    for item in list_backups(load_target(target), target):
        state = ",".join(f"{app}.{name}" for app, name in item.migration_state[-3:])
        typer.echo(f"{item.created_at}  {item.size_bytes:>12}  {item.uri}  ...{state}")


project_app = typer.Typer(no_args_is_help=True, help="Django projects to promote (Prefect blocks).")
target_app = typer.Typer(no_args_is_help=True, help="Database targets (Prefect blocks; URL stored as a secret).")
app.add_typer(project_app, name="project")
app.add_typer(target_app, name="target")


@project_app.command("add")
def project_add(
    name: str,
    path: str = typer.Option(..., help="Folder holding manage.py."),
    settings: str = typer.Option(..., help="DJANGO_SETTINGS_MODULE."),
    python: str = typer.Option("", help="The project's interpreter (default: dbpromote's)."),
    verify_dir: str = typer.Option("verify", help="Folder of SQL checks, relative to --path."),
    env: list[str] | None = typer.Option(None, help="KEY=VALUE the settings need at import (repeat); not for secrets."),
    env_secret: list[str] | None = typer.Option(
        None, "--env-secret", help="KEY=BLOCK: KEY's value from the Prefect Secret block BLOCK (repeat)."
    ),
    env_file: str = typer.Option("", help="A dotenv file the settings expect (relative to --path), e.g. .env."),
    database_url_env: str = typer.Option(
        "DATABASE_URL", help="The variable the settings read the database URL from ('' for none)."
    ),
    database_env: list[str] | None = typer.Option(
        None, help="PART=VARIABLE for settings that read the connection in parts: host, port, name, user, password."
    ),
    acknowledge_package_changes: str = typer.Option(
        "", help="Comma-separated installed apps whose models differ from their migrations, accepted as they are."
    ),
    lint_ignore: list[str] | None = typer.Option(
        None, help="RULE=REASON: a lint rule that is no risk for this project, and why (repeat)."
    ),
) -> None:
    """Register (or replace) a Django project."""
    from pathlib import Path

    from dbpromote.config import DATABASE_PARTS, DjangoProject, check_block_name

    check_block_name(name, "project")
    if not (Path(path) / "manage.py").is_file():
        fail(f"{path} has no manage.py; give the folder that holds it with --path.")
    parts = pairs(database_env or [], "--database-env")
    if unknown := sorted(set(parts) - set(DATABASE_PARTS)):
        fail(f"--database-env knows no part {', '.join(unknown)}; use {', '.join(DATABASE_PARTS)}.")
    if env_file and not (Path(path) / env_file).is_file():
        fail(f"The env file {Path(path) / env_file} does not exist; give its path relative to --path.")
    for item in lint_ignore or []:
        rule, _, reason = item.partition("=")
        if not reason.strip():
            fail(f"--lint-ignore {rule} has no reason; write it as --lint-ignore {rule}=WHY.")
    ignored = pairs(lint_ignore or [], "--lint-ignore")
    DjangoProject(
        path=str(Path(path).resolve()),
        settings_module=settings,
        python=python,
        verify_dir=verify_dir,
        env=pairs(env or [], "--env"),
        env_secrets=pairs(env_secret or [], "--env-secret"),
        env_file=env_file,
        database_url_env=database_url_env,
        database_env=parts,
        acknowledged_package_changes=[a.strip() for a in acknowledge_package_changes.split(",") if a.strip()],
        lint_ignore=ignored,
    ).save(name, overwrite=True)
    typer.echo(f"project {name} registered")


def pairs(items: list[str], option: str) -> dict[str, str]:
    """KEY=VALUE options as a dict; one sentence for anything else."""
    result = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            fail(f"{option} {item.split('=')[0]!r} is not KEY=VALUE; write it as {option} KEY=VALUE.")
        result[key.strip()] = value
    return result


group_app = typer.Typer(no_args_is_help=True, help="Groups of targets promoted together in waves (Prefect blocks).")
app.add_typer(group_app, name="group")


@group_app.command("add")
def group_add(
    name: str,
    targets: str = typer.Option(..., help="The member targets, comma-separated, in the order they are promoted."),
    canary: int = typer.Option(1, help="The first members, promoted first on their own; all must succeed."),
    wave_size: str = typer.Option("25%", help="Members per wave after the canaries: N, or P% of them."),
    parallel: int = typer.Option(4, help="Members migrating at once inside a wave."),
    per_server: int = typer.Option(2, help="Members migrating at once on one database server (any promotion)."),
    max_failures: str = typer.Option("1", help="Failures that halt the group: N, or P% of the members."),
) -> None:
    """Register (or replace) a group: `promote --through staging,NAME` promotes every member under one approval."""
    from dbpromote.config import TargetGroup, check_block_name, load_target

    check_block_name(name, "group")
    members = [member.strip() for member in targets.split(",") if member.strip()]
    if not members or len(set(members)) != len(members):
        fail(f"--targets {targets!r} must name each member once, e.g. --targets shard-1,shard-2,shard-3.")
    group = TargetGroup(
        members=members,
        canary=canary,
        wave_size=wave_size,
        parallel=parallel,
        per_server=per_server,
        max_failures=max_failures,
    )
    group.sizes()
    policies = {}
    for member in members:
        target = load_target(member)
        policies.setdefault((target.requires_approval, tuple(target.approvers), target.min_approvers), member)
    if len(policies) > 1:
        differ = " and ".join(policies.values())
        fail(
            f"{differ} differ in who approves them (--requires-approval, --approvers, --min-approvers), and one "
            "approval covers a group; give its members the same, or put them in separate groups."
        )
    try:
        load_target(name)
    except DbpromoteError:
        group.save(name, overwrite=True)
        typer.echo(f"group {name} registered: {len(members)} members")
        return
    fail(f"{name} is already a target's name; give the group another, e.g. {name}-fleet.")


approver_app = typer.Typer(no_args_is_help=True, help="People who approve, proving it with a one-time code.")
app.add_typer(approver_app, name="approver")


@approver_app.command("add")
def approver_add(
    name: str,
    replace: bool = typer.Option(False, "--replace", help="Issue a new secret (the old one's codes stop working)."),
) -> None:
    """Enrol a person: a one-time-password secret (RFC 6238) in a Prefect Secret block; scan the QR code (or the
    URI) into an authenticator app now, it is shown only this once."""
    import io

    import qrcode

    from dbpromote.approvers import enroll

    uri = enroll(name, replace)
    code = qrcode.QRCode(border=1)
    code.add_data(uri)
    drawn = io.StringIO()
    code.print_ascii(out=drawn, invert=True)
    typer.echo(drawn.getvalue())
    typer.echo(uri)
    typer.echo(f"{name} enrolled: name them in a target's --approvers; each approval then needs their current code")


DEPLOYS = ("rolling", "stopped")


@target_app.command("add")
def target_add(
    name: str,
    url: str = typer.Option(
        ...,
        help="The migration role's connection string, any form libpq accepts: postgresql://USER:PASSWORD@HOST:PORT/DB, "
        "a socket (postgresql://USER:PASSWORD@/DB?host=/cloudsql/PROJECT:REGION:INSTANCE), host=HOST dbname=DB ...",
    ),
    requires_approval: bool = typer.Option(False, "--requires-approval"),
    approvers: str = typer.Option("", help="Comma-separated names allowed to approve."),
    min_approvers: int = typer.Option(
        1, help="How many different enrolled approvers must approve (2: the two-person rule)."
    ),
    bucket: str = typer.Option("dbpromote-backups"),
    prefix: str = typer.Option("backups"),
    app_role: str = typer.Option("django_app"),
    lock_timeout: int = typer.Option(2000, help="lock_timeout in ms."),
    max_app_wait: float = typer.Option(
        5, min=0, help="Seconds an app session may wait behind a migration before it is cancelled; 0: never."
    ),
    health_url: str = typer.Option("", help="Asked after the target migrates: it must answer 2xx."),
    health_tries: int = typer.Option(5, min=1, help="Tries of --health-url before the app counts as down."),
    health_within: float = typer.Option(30, min=1, help="Seconds the --health-url tries are spread over."),
    smoke_command: str = typer.Option(
        "", help="Run in the project's folder after the target migrates, e.g. 'manage.py check'; must exit 0."
    ),
    window: list[str] | None = typer.Option(
        None,
        help="A maintenance window, DAYS HH:MM-HH:MM ZONE, e.g. 'sat,sun 01:00-05:00 Europe/Berlin' (repeat): a step "
        "that held a heavy lock longer than --window-lock on staging, or may rewrite a table, waits for one.",
    ),
    window_lock: float = typer.Option(10, min=0, help="Seconds of a heavy lock on staging that need a window."),
    watch_after: float | None = typer.Option(
        None, min=0, help="Seconds the database is watched after it migrates; default 180 with approval, else 0."
    ),
    database_alias: str = typer.Option("default", help="The project's DATABASES alias this database is."),
    drift: str = typer.Option(
        "block", help="Drift found by a promotion's preflight: block (stop), warn (show it in the approval), off."
    ),
    deploy: str = typer.Option(
        "rolling",
        help="How the app is deployed: rolling (the previous release serves while the database changes: a plan "
        "that breaks it migrates in two phases around the deploy) or stopped (one phase).",
    ),
    gcp_credentials: str = typer.Option(
        "",
        help="A prefect-gcp GcpCredentials block whose service account writes the backups (dbpromote[gcp]); "
        "default: application default credentials.",
    ),
    check: bool = typer.Option(True, help="Connect once to check the URL (--no-check: register it unchecked)."),
) -> None:
    """Register (or replace) a database target; the URL is stored as a secret and never printed.

    The URL is checked by connecting once (the server must be reachable from here; --no-check skips it).
    """
    from dbpromote.config import DatabaseTarget, check_block_name
    from dbpromote.conninfo import Conninfo
    from dbpromote.postgres import connect

    check_block_name(name, "target")
    Conninfo(url)
    for option, value, allowed in (("--drift", drift, ("block", "warn", "off")), ("--deploy", deploy, DEPLOYS)):
        if value not in allowed:
            fail(f"{option} {value!r} is not one of {', '.join(allowed)}; pick one, e.g. {option} {allowed[0]}.")
    names = [a.strip() for a in approvers.split(",") if a.strip()]
    if min_approvers > 1:
        from dbpromote.approvers import is_enrolled

        enrolled = [approver for approver in names if is_enrolled(approver)]
        if len(enrolled) < min_approvers:
            fail(
                f"--min-approvers {min_approvers} needs at least {min_approvers} enrolled people on --approvers "
                f"(enrolled: {', '.join(enrolled) or 'none'}); enrol them with `dbpromote approver add NAME`."
            )
    target = DatabaseTarget(
        url=url,
        requires_approval=requires_approval,
        bucket=bucket,
        prefix=prefix,
        app_role=app_role,
        approvers=names,
        min_approvers=min_approvers,
        deploy=deploy,
        lock_timeout_ms=lock_timeout,
        max_app_wait_s=max_app_wait,
        health_url=health_url,
        health_tries=health_tries,
        health_within_s=health_within,
        smoke_command=smoke_command,
        windows=window or [],
        window_lock_s=window_lock,
        watch_after_s=watch_after,
        database_alias=database_alias,
        drift=drift,
        gcp_credentials=gcp_credentials,
    )
    if gcp_credentials:
        from dbpromote.gcs import credentials

        credentials(gcp_credentials)  # the block exists, and prefect-gcp is here to read it
    if check:
        connect(target, name).close()
    target.save(name, overwrite=True)
    typer.echo(f"target {name} registered")


def main() -> None:
    # The client's event queue says "Still processing items" when a short command exits: noise for a CLI user.
    logging.getLogger("EventsWorker").setLevel(logging.ERROR)
    global CHOSEN_SERVER
    with prefect_server() as chosen:
        CHOSEN_SERVER = chosen
        run_app()


@contextlib.contextmanager
def prefect_server() -> Iterator[str]:
    """Point the command at the Prefect server the user chose: PREFECT_API_URL from the environment or from the
    active Prefect profile (`prefect profile use`, `prefect config set`, as Prefect itself resolves them) wins; the
    local stack is the default only when neither names one. Yields where the chosen server came from, or "" for
    the local stack (or no server at all)."""
    from prefect.context import get_settings_context
    from prefect.settings import temporary_settings

    context = get_settings_context()
    stack = local_stack.Stack.load()
    chosen = context.settings.api.url
    if chosen:
        local = "prefect" in stack.ports and chosen.rstrip("/") == stack.prefect_api_url
        source = (
            "PREFECT_API_URL" if "PREFECT_API_URL" in os.environ else f"the Prefect profile {context.profile.name!r}"
        )
        yield "" if local else f"{chosen} (from {source})"
        return
    if "prefect" not in stack.ports:
        yield ""
        return
    environment = stack.client_env()
    os.environ.update(environment)  # the GCS client and any process this command starts read these
    updates = {"api.url": environment["PREFECT_API_URL"]}
    if "PREFECT_API_AUTH_STRING" in environment:
        updates["api.auth_string"] = environment["PREFECT_API_AUTH_STRING"]
    with temporary_settings(updates=updates):
        yield ""


def run_app() -> None:
    """The command, its known failures each as one sentence and exit code 1."""
    try:
        app()
    except SystemExit as done:  # how click ends every command
        if done.code in (0, None) and CHOSEN_SERVER:
            typer.echo(f"Prefect server: {CHOSEN_SERVER}", err=True)
        raise
    except DbpromoteError as error:
        typer.echo(error_line(str(error)), err=True)
        sys.exit(1)
    except pydantic.ValidationError as error:  # an option the block refuses, e.g. --lock-timeout 0
        first = error.errors()[0]
        option = "--" + "-".join(str(part) for part in first["loc"]).replace("_", "-").removesuffix("-ms")
        typer.echo(error_line(f"{option} {first['msg'].lower()}; give it again with a value that is."), err=True)
        sys.exit(1)
    except httpx.HTTPStatusError as error:
        if error.response.status_code != 401:
            raise
        typer.echo(
            error_line(
                "The Prefect API refused this command's credential (401); set PREFECT_API_AUTH_STRING to the "
                "server's (the local stack's: `dbpromote stack status --show-secrets`)."
            ),
            err=True,
        )
        sys.exit(1)
    except httpx.TransportError:
        from prefect.settings import PREFECT_API_URL

        typer.echo(
            f"error: Cannot reach the Prefect API at {PREFECT_API_URL.value()}; start the local stack with "
            "`dbpromote stack up`, or point PREFECT_API_URL at your Prefect server.",
            err=True,
        )
        sys.exit(1)
