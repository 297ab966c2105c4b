"""The `dbpromote` command as a Click command, for the docs site's generated reference (docs/reference/cli.md,
mkdocs-click): the reference is read from the commands themselves, never written by hand."""

import typer

from dbpromote.cli import app

command = typer.main.get_command(app)
