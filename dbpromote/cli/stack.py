"""`dbpromote stack`: the local stack."""

import json

import typer

from dbpromote import localstack as local_stack
from dbpromote.cli.common import app

stack_app = typer.Typer(no_args_is_help=True, help="The local stack: PostgreSQL x2, GCS emulator, Prefect.")


app.add_typer(stack_app, name="stack")


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
