"""What every command shares: the app, an error's one line, following a run it started."""

import re
import sys

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Promote Django migrations through environments.")


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


def pairs(items: list[str], option: str) -> dict[str, str]:
    """KEY=VALUE options as a dict; one sentence for anything else."""
    result = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            fail(f"{option} {item.split('=')[0]!r} is not KEY=VALUE; write it as {option} KEY=VALUE.")
        result[key.strip()] = value
    return result


def plan_here(project: str, target: str, to: str = ""):
    """The target's plan (the probe's answer) asked from this terminal, so that a migration named wrong is refused
    before any run exists; None when the project's folder is not on this machine (the run asks it then)."""
    from pathlib import Path

    from dbpromote.config import load_project, load_target
    from dbpromote.planning import plan_answer
    from dbpromote.probe import run_probe

    django_project, database = load_project(project), load_target(target)
    if not (Path(django_project.path) / "manage.py").is_file():
        return None
    return plan_answer(run_probe(django_project, database, "plan", "--to", to), django_project, target, to)
