"""`dbpromote`: the command-line front door, a module per command group; commands that change a database
trigger a deployment."""

import contextlib
import logging
import os
import sys
from collections.abc import Iterator

import httpx
import pydantic
import typer

from dbpromote import localstack as local_stack

# Each module registers its commands on the app as it is imported, in this order (`dbpromote --help` lists them so).
from dbpromote.cli import common, promotion, registry, schema, waiting  # noqa: F401
from dbpromote.cli import stack as stack_commands  # noqa: F401
from dbpromote.cli.common import app, error_line
from dbpromote.errors import DbpromoteError


def main() -> None:
    # The client's event queue says "Still processing items" when a short command exits: noise for a CLI user.
    logging.getLogger("EventsWorker").setLevel(logging.ERROR)
    with prefect_server() as chosen:
        common.CHOSEN_SERVER = chosen
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
        app(prog_name="dbpromote")  # what click would guess in a warm child is its server's module
    except SystemExit as done:  # how click ends every command
        if done.code in (0, None) and common.CHOSEN_SERVER:
            typer.echo(f"Prefect server: {common.CHOSEN_SERVER}", err=True)
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
