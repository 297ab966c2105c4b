"""What dbpromote knows, as Prefect blocks: projects, targets, groups of targets, enrolled approvers."""

import typer

from dbpromote.cli.common import app, fail, pairs
from dbpromote.errors import DbpromoteError

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
    ).named(name)
    if gcp_credentials:
        from dbpromote.gcs import credentials

        credentials(gcp_credentials)  # the block exists, and prefect-gcp is here to read it
    if check:
        connect(target).close()
    target.save(name, overwrite=True)
    typer.echo(f"target {name} registered")
