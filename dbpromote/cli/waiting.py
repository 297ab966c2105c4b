"""Answers to a waiting run: approve, reject, deployed, run-now."""

import typer

from dbpromote.cli.common import app, code_prompt, fail, named_approver


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
