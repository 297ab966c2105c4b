"""What a target's schema and records say: drift, reconcile, check, journal, backups."""

import json
import os
import re

import typer

from dbpromote.cli.common import app, fail, plan_here, report_end, run_deployment


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
    records = read_records(database, "drift", scope=str(run.id))
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
    from dbpromote.drift import check_next
    from dbpromote.models.plan import parse_target_migration

    parse_target_migration(migration)
    answer = plan_here(project, target)
    if answer is not None:
        pending = [f"{m.app}.{m.name}" for m in answer.migrations]
        check_next(pending, [f"{a}.{n}" for a, n in answer.applied], migration.replace(":", ".", 1), target)
    run_deployment("reconcile/reconcile", {"project": project, "target": target, "migration": migration}, wait)


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
    from dbpromote.reporting.markdown import check_markdown

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
        target = DatabaseTarget(url=url).named(against)
    else:
        target = load_target(against)
    previous = None
    if previous_code:
        if not (Path(previous_code) / "manage.py").is_file():
            fail(f"--previous-code {previous_code} holds no manage.py; give the folder of the previous release's tree.")
        previous = django_project.model_copy(
            update={"path": str(Path(previous_code).resolve()), "python": previous_python or django_project.python}
        )
    report = run_check(django_project, project, target, allow_risks, records=not url, previous_code=previous)
    if as_json:
        typer.echo(json.dumps(report.model_dump(mode="json") | {"blocking": report.blocking}, indent=2))
    else:
        typer.echo(check_markdown(report))
    raise typer.Exit(1 if report.blocking else 0)


@app.command("journal")
def journal(
    target: str,
    since: str = typer.Option("", help="From this date (YYYY-MM-DD) or time on."),
    as_markdown: bool = typer.Option(False, "--markdown", help="As the migration notes a team keeps by hand."),
) -> None:
    """Every intervention on a target, newest first: promotions, fixes, restores, rollbacks, reconciliations."""
    from dbpromote.config import load_target
    from dbpromote.interventions import interventions
    from dbpromote.reporting.markdown import interventions_markdown

    if since and not re.fullmatch(r"\d{4}-\d{2}-\d{2}([T ][\d:.+Z-]*)?", since):
        fail(f"--since {since!r} is not a date; write it as YYYY-MM-DD, e.g. --since 2026-11-01.")
    found = interventions(load_target(target), since)
    typer.echo(
        interventions_markdown(target, found)
        if as_markdown
        else "\n".join(i.line() for i in found) or "nothing recorded"
    )


@app.command("backups")
def backups(target: str) -> None:
    """The verified backups of a target, newest first: time, size, URI, migration state."""
    from dbpromote.backups import list_backups
    from dbpromote.config import load_target

    for item in list_backups(load_target(target)):
        state = ",".join(f"{app}.{name}" for app, name in item.migration_state[-3:])
        typer.echo(f"{item.created_at}  {item.size_bytes:>12}  {item.uri}  ...{state}")
