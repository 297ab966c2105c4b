"""`dbpromote`: the command-line front door; commands that change a database trigger a deployment."""

import json
import sys

import typer

from dbpromote.errors import DbpromoteError
from deployments import stack as local_stack

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Promote Django migrations through environments.")
stack_app = typer.Typer(no_args_is_help=True, help="The local stack: PostgreSQL x2, GCS emulator, Prefect.")
app.add_typer(stack_app, name="stack")


def fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


@stack_app.command("up")
def stack_up() -> None:
    """Start every component that is not running yet (a second `up` starts nothing twice)."""
    stack = local_stack.up()
    typer.echo(f"stack up: Prefect UI {stack.prefect_ui_url}, state in {stack.home}")


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
    report = local_stack.status(show_secrets=show_secrets)
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    else:
        for name, component in report["components"].items():
            where = component.get("address") or component.get("endpoint") or component.get("ui_url") or ""
            typer.echo(f"{name:<11} {'healthy' if component['healthy'] else 'DOWN':<8} {where}")
    raise typer.Exit(0 if report["healthy"] else 1)


@stack_app.command("reset")
def stack_reset() -> None:
    """Return both databases to the sample project's v1 state with seeded tenants."""
    local_stack.reset()
    typer.echo("staging and production reset to v1 with seeded tenants")


def main() -> None:
    try:
        app()
    except DbpromoteError as error:
        typer.echo(f"error: {error}", err=True)
        sys.exit(1)
