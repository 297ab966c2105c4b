"""Real third-party Django codebases upgraded from an old release to a new one, through the CLI as a user types it:
`project add`, `target add`, `promote`, `approve`; staging first, production after the approval."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from uuid import UUID

import psycopg
import pytest
from psycopg import sql

from compat.codebases import CODEBASES, CROSS_VERSION, Codebase, venv_python
from tests.harness import cli, wait_for_run

SERVERS = ("staging", "production")


def database_url(stack, codebase: Codebase, server: str, suffix: str = "") -> str:
    return stack.database_url(server).rsplit("/", 1)[0] + f"/compat_{codebase.name}{suffix}"


def create_database(stack, codebase: Codebase, server: str, suffix: str = "") -> None:
    """An empty database the migration role owns, as a team's DBA would hand it over."""
    name = sql.Identifier(f"compat_{codebase.name}{suffix}")
    with psycopg.connect(**stack.superuser_conninfo(server), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))
        conn.execute(sql.SQL("CREATE DATABASE {} OWNER tenant_owner").format(name))


def applied(url: str) -> list[tuple[str, str]]:
    """The migrations Django recorded; none on a database it never migrated."""
    with psycopg.connect(url) as conn:
        if not conn.execute("SELECT to_regclass('django_migrations') IS NOT NULL").fetchone()[0]:
            return []
        return [tuple(row) for row in conn.execute("SELECT app, name FROM django_migrations ORDER BY app, name")]


def add_project(codebase: Codebase, python: Path) -> str:
    """`dbpromote project add` with the codebase's options; its secrets saved as Prefect Secret blocks first."""
    from prefect.blocks.system import Secret

    options = list(codebase.project_options)
    for variable, value in codebase.secrets.items():
        block = f"compat-{codebase.name}-{variable.lower().replace('_', '-')}"
        Secret(value=value).save(block, overwrite=True)
        options += ["--env-secret", f"{variable}={block}"]
    name = f"compat-{codebase.name}"
    added = cli("project", "add", name, "--path", str(codebase.path), "--settings", codebase.settings,
                "--python", str(python), *options)  # fmt: skip
    assert added.returncode == 0, added.stderr
    return name


def manage(python: Path, project: str, url: str, *args: str) -> subprocess.CompletedProcess:
    """The site's own manage.py, with the environment dbpromote gives its settings for this database."""
    from dbpromote.config import load_project

    env = os.environ | load_project(project).environment(url)
    return subprocess.run(
        [str(python), "manage.py", *args], cwd=load_project(project).path, env=env, capture_output=True, text=True
    )


@pytest.fixture(params=CODEBASES + CROSS_VERSION, ids=[codebase.name for codebase in CODEBASES + CROSS_VERSION])
def codebase(request, stack):
    codebase: Codebase = request.param
    for server in SERVERS:
        create_database(stack, codebase, server)
    return codebase


def test_a_real_codebase_is_promoted_from_its_old_release_to_its_new_one(stack, codebase):
    """Through the CLI, with the drift gate at its default (block): the old release's databases, migrated by its own
    `manage.py migrate` (under Django 4.2 for the upgrades across a Django version), promoted to the new release;
    afterwards `dbpromote drift` finds nothing blocking (names Django generated otherwise are notes), and still finds
    and blocks on a hand-made index, default and constraint."""
    from dbpromote.config import load_project, load_target
    from dbpromote.drift import check_drift

    old, new = venv_python(codebase.old), venv_python(codebase.new)
    urls = {server: database_url(stack, codebase, server) for server in SERVERS}
    # The deployment as it is: both databases migrated by the old release's own `manage.py migrate`.
    project = add_project(codebase, old)
    for server in SERVERS:
        migrated = manage(old, project, urls[server], "migrate", "--no-input")
        assert migrated.returncode == 0, migrated.stderr[-3000:]
        with psycopg.connect(urls[server]) as conn:
            for statement in codebase.seed:
                conn.execute(statement)
    before = applied(urls["production"])
    # The upgrade: the project now runs the new release.
    add_project(codebase, new)
    targets = [f"{project}-{server}" for server in SERVERS]
    assert cli("target", "add", targets[0], "--url", urls["staging"]).returncode == 0
    # Watched for 2 s after it migrates, not a production's 180: the watch runs on their schema, the suite moves on.
    production = ["--requires-approval", "--watch-after", "2"]
    assert cli("target", "add", targets[1], "--url", urls["production"], *production).returncode == 0

    phases = phases_as_checked(project, targets[1])
    print(f"\n{codebase.name}: " + "\n".join(f"{label} {phase} {found}" for label, (phase, found) in phases.items()))
    breaking = {(label, model, field) for label, (_, found) in phases.items() for model, field, _ in found}
    assert codebase.breaking <= breaking, breaking

    # One terminal waits for the promotion; the id it prints at once is what another approves, and (deployed
    # rolling, the default) what another says is deployed between each target's two phases.
    dbpromote = str(Path(sys.executable).parent / "dbpromote")
    promote = [dbpromote, "promote", "--project", project, "--through", ",".join(targets), "--wait"]
    waiting = subprocess.Popen(promote, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ)
    run_id = UUID(waiting.stdout.readline().split()[0])
    answered = answer_until_it_ends(waiting, run_id, codebase, urls["production"], before)
    out, err = waiting.communicate(timeout=900)
    two_phases = any(phase == "after-deploy" for phase, _ in phases.values())
    assert answered == (["deploy", "approval", "deploy"] if two_phases else ["approval"]), (answered, out + err)
    assert waiting.returncode == 0 and out.splitlines()[-1] == "finished: Completed", out + err
    assert applied(urls["staging"]) == applied(urls["production"]) != before
    ran = {f"{app}.{name}" for app, name in set(applied(urls["production"])) - set(before)}
    assert set(codebase.expected) <= ran, ran
    plan = manage(new, project, urls["staging"], "migrate", "--plan")
    assert "No planned migration operations." in plan.stdout, plan.stdout + plan.stderr
    # The new release's own `migrate` has nothing left to do on production: no migration, and no content type or
    # permission its post_migrate would add (dbpromote sends the signal once after a step's migrations).
    made = made_by_post_migrate(urls["production"])
    again = manage(new, project, urls["production"], "migrate", "--no-input")
    assert "No migrations to apply." in again.stdout, again.stdout + again.stderr
    assert made_by_post_migrate(urls["production"]) == made and made["content types"], made
    for server in SERVERS:
        if codebase.check:
            query, value = codebase.check
            with psycopg.connect(urls[server]) as conn:
                assert conn.execute(query).fetchone()[0] == value
    # The schema is what the applied migrations produce, but for names Django generated otherwise.
    for drift in (check_drift(load_project(project), load_target(targets[0])),
                  drift_as_typed(project, targets[1], exit_code=0)):  # fmt: skip
        assert drift.blocking == [] and {d.object for d in drift.notes} == codebase.name_notes, drift.text()

    table, column = codebase.hand_made_on
    with psycopg.connect(urls["production"], autocommit=True) as conn:
        for statement in (
            "CREATE INDEX hand_made_idx ON {table} ({column})",
            "ALTER TABLE {table} ALTER COLUMN {column} SET DEFAULT '7'",
            "ALTER TABLE {table} ADD CONSTRAINT hand_made_check CHECK ({column} IS NOT NULL) NOT VALID",
        ):
            conn.execute(sql.SQL(statement).format(table=sql.Identifier(table), column=sql.Identifier(column)))
    blocking = {(d.object, d.kind) for d in drift_as_typed(project, targets[1], exit_code=1).blocking}
    assert blocking == {
        (f"index public.{table}.hand_made_idx", "unexpected"),
        (f"column public.{table}.{column}", "different"),
        (f"constraint public.{table}.hand_made_check", "unexpected"),
    }


def made_by_post_migrate(url: str) -> dict[str, set]:
    """The content types and permissions Django's post_migrate creates, as the database has them."""
    with psycopg.connect(url) as conn:
        tables = {"content types": "django_content_type", "permissions": "auth_permission"}
        made = {kind: set() for kind in tables}
        for kind, table in tables.items():
            if conn.execute("SELECT to_regclass(%s) IS NOT NULL", [table]).fetchone()[0]:
                made[kind] = set(conn.execute(sql.SQL("SELECT * FROM {}").format(sql.Identifier(table))).fetchall())
        return made


def phases_as_checked(project: str, target: str) -> dict[str, tuple[str, list[tuple[str, str, str]]]]:
    """`dbpromote check --json` against a target: each planned migration's phase, and what it breaks for the
    running release (model, field, kind)."""
    checked = cli("check", "--project", project, "--against", target, "--json", "--allow-risks")
    report = json.loads(checked.stdout)
    return {
        f"{m['app']}.{m['name']}": (m["phase"], [(c["model"], c["field"], c["kind"]) for c in m["breaking"]])
        for m in report["plan"]["migrations"]
    }


def answer_until_it_ends(waiting: subprocess.Popen, run_id: UUID, codebase: Codebase, production: str, before) -> list:
    """Approve the promotion and say the new release is deployed whenever it waits for either, until it ends;
    what was answered, in order. Production is untouched until its approval."""
    from dbpromote.runs import wait_for, waits_for_deploy

    answered, deadline = [], time.monotonic() + 1200
    while waiting.poll() is None:
        assert time.monotonic() < deadline, "the promotion did not end"
        run = wait_for(str(run_id), paused=True, timeout_s=2)
        if not run.state.is_paused():
            continue
        if waits_for_deploy(run):
            said = cli("deployed", str(run_id), "--release", "new", "--by", "ci")
            assert said.returncode == 0, said.stderr
            answered.append("deploy")
        else:
            assert applied(production) == before  # waiting for approval: production untouched
            approved = cli(
                "approve", str(run_id), "--approver", "ci", "--comment", codebase.covers, "--acknowledge-risks"
            )
            assert approved.returncode == 0, approved.stderr
            answered.append("approval")
        while wait_for(str(run_id), timeout_s=0).state.is_paused():  # until the server took the answer
            time.sleep(0.5)
    return answered


def drift_as_typed(project: str, target: str, exit_code: int):
    """`dbpromote drift TARGET --project P --json` as a user types it: its report, once it exited as expected."""
    from dbpromote.models.drift import DriftReport

    typed = cli("drift", target, "--project", project, "--json")
    assert typed.returncode == exit_code, typed.stdout + typed.stderr
    return DriftReport.model_validate_json(typed.stdout)


def test_model_changes_are_what_makemigrations_check_finds(stack, codebase):
    """The preflight's model check agrees with `makemigrations --check` of the same project on the same database."""
    from dbpromote.config import load_project, load_target
    from dbpromote.probe import run_probe

    new = venv_python(codebase.new)
    project = add_project(codebase, new)
    assert cli("target", "add", f"{project}-staging", "--url", database_url(stack, codebase, "staging")).returncode == 0

    check = manage(new, project, database_url(stack, codebase, "staging"), "makemigrations", "--check", "--dry-run")
    found_by_django = {line.split("'")[1] for line in check.stdout.splitlines() if line.startswith("Migrations for")}
    answer = run_probe(load_project(project), load_target(f"{project}-staging"), "plan")
    assert answer.kind == "plan", answer
    assert {change.app for change in answer.model_changes} == found_by_django, check.stdout
    assert (check.returncode == 0) == (not found_by_django), check.stdout + check.stderr


def test_settings_that_need_a_secret_say_which_and_how_to_give_it_at_the_terminal(stack):
    """`promote --wait` on a project whose settings read SECRET_KEY with no default, not given: the run fails in
    preflight and the command prints why, naming the variable and the option, and exits non-zero."""
    (allauth,) = [codebase for codebase in CODEBASES if codebase.name == "allauth"]
    create_database(stack, allauth, "staging")
    without_secret = Codebase(**(vars(allauth) | {"secrets": {}}))
    project = add_project(without_secret, venv_python(allauth.new))
    target = f"{project}-staging"
    assert cli("target", "add", target, "--url", database_url(stack, allauth, "staging")).returncode == 0

    result = cli("promote", "--project", project, "--through", target, "--wait")

    assert result.returncode == 1
    assert "finished: Failed" in result.stdout
    (error,) = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert "'settings' does not load: it needs SECRET_KEY" in error, result.stderr
    assert "--env-secret SECRET_KEY=BLOCK" in error
    assert applied(database_url(stack, allauth, "staging")) == []


def named(name: str) -> Codebase:
    (codebase,) = [codebase for codebase in CODEBASES if codebase.name == name]
    return codebase


def deployed(stack, codebase: Codebase, python: Path, databases: dict[str, tuple[str, str]]) -> tuple[str, dict]:
    """The codebase's project at `python`'s release, and each database (target -> its server and name suffix)
    created, migrated by the release's own `manage.py migrate`, seeded and registered as a target (production's
    require an approval). The project's name and each target's URL."""
    project, urls = add_project(codebase, python), {}
    for target, (server, suffix) in databases.items():
        create_database(stack, codebase, server, suffix)
        urls[target] = database_url(stack, codebase, server, suffix)
        migrated = manage(python, project, urls[target], "migrate", "--no-input")
        assert migrated.returncode == 0, migrated.stderr[-3000:]
        with psycopg.connect(urls[target]) as conn:
            for statement in codebase.seed:
                conn.execute(statement)
        approval = [] if server == "staging" else ["--requires-approval", "--watch-after", "2"]
        assert cli("target", "add", target, "--url", urls[target], *approval).returncode == 0
    return project, urls


def rows(url: str, query: str) -> list[tuple]:
    with psycopg.connect(url) as conn:
        return conn.execute(query).fetchall()


# Mixed-case addresses, as allauth's old releases stored them; its users' own fix_*: lower-case them.
USERS = [
    "INSERT INTO auth_user (password, is_superuser, username, first_name, last_name, email, is_staff, is_active, "
    "date_joined) SELECT '!', false, 'user' || n, '', '', 'User' || n || '@Example.COM', false, true, now() "
    "FROM generate_series(1, 23) AS n",
    'INSERT INTO account_emailaddress (user_id, email, verified, "primary") '
    "SELECT id, email, false, true FROM auth_user WHERE username LIKE 'user%'",
]
EMAILS = "SELECT id, email, verified FROM account_emailaddress ORDER BY id"


def test_a_data_fix_on_a_real_codebase_runs_batched_and_as_its_orm_code_and_is_undone(stack, tmp_path):
    """A fix of allauth's own table through the CLI as a user types it: an unscoped SQL fix in batches through
    staging and an approved production, undone on production from its before-images; then a fix_*.py written with
    allauth's models, run in the site's interpreter."""
    allauth = named("allauth")
    allauth = Codebase(**(vars(allauth) | {"seed": allauth.seed + USERS}))
    databases = {f"compat-fix-{server}": (server, "_fix") for server in SERVERS}
    project, urls = deployed(stack, allauth, venv_python(allauth.new), databases)
    staging, production = urls
    before = rows(urls[production], EMAILS)

    script = tmp_path / "fix_email_case.sql"
    script.write_text("UPDATE account_emailaddress SET email = lower(email) WHERE email <> lower(email)")
    started = cli("fix", "--project", project, "--through", f"{staging},{production}", "--script", str(script),
                  "--batch-size", "5", "--expect-rows", "1..30", "--purpose", "lower-case addresses",
                  "--until-paused")  # fmt: skip
    assert started.returncode == 0, started.stderr
    run_id = started.stdout.split()[0]
    assert rows(urls[production], EMAILS) == before  # waiting for the approval: production untouched
    approved = cli("approve", run_id, "--approver", "ci", "--comment", "unscoped, seen", "--acknowledge-risks")
    assert approved.returncode == 0, approved.stderr
    assert wait_for_run(run_id).is_completed()

    from dbpromote.config import load_target
    from dbpromote.records import read_records
    from dbpromote.runs import wait_for

    for target, url in urls.items():
        assert all(email == email.lower() for _, email, _ in rows(url, EMAILS))
        (record,) = [r for r in read_records(load_target(target), "fixes") if r["flow_run_id"] == run_id]
        assert record["rows"] == 24 and record["batches"] == 5  # alice and 23 users, 5 at a time
    undo = cli("fix-undo", run_id, "--target", production)  # production's undo waits for an approval too
    assert undo.returncode == 0, undo.stderr
    undo_id = undo.stdout.split()[0]
    assert wait_for(undo_id, paused=True, timeout_s=600).state.is_paused()
    assert cli("approve", undo_id, "--approver", "ci", "--comment", "put back").returncode == 0
    assert wait_for_run(undo_id).is_completed()
    assert rows(urls[production], EMAILS) == before  # the exact rows back

    script = tmp_path / "fix_verify_addresses.py"
    script.write_text(
        "from allauth.account.models import EmailAddress\n\n"
        "for address in EmailAddress.objects.filter(verified=False, email__endswith='1@example.com'):\n"
        "    address.verified = True\n"
        "    address.save(update_fields=['verified'])\n"
    )
    done = cli("fix", "--project", project, "--through", staging, "--script", str(script), "--wait")
    assert done.returncode == 0, done.stderr
    verified = [email for _, email, is_verified in rows(urls[staging], EMAILS) if is_verified]
    assert sorted(verified) == ["alice@example.com", "user11@example.com", "user1@example.com", "user21@example.com"]


def test_a_group_of_a_real_codebases_shards_is_promoted_canary_first(stack):
    """django-filer's shards (dj-database-url settings, a squashed migration the old release applied) as a group:
    one approval, the canary, then a wave; every shard at the new release's head, its schema what the migrations
    make."""
    from dbpromote.config import load_project, load_target
    from dbpromote.drift import check_drift
    from dbpromote.records import read_records

    filer = named("filer")
    databases = {"compat-group-staging": ("staging", "_group")}
    databases |= {f"compat-shard-{n}": ("production", f"_shard_{n}") for n in range(1, 4)}
    project, urls = deployed(stack, filer, venv_python(filer.old), databases)
    shards = {target: url for target, url in urls.items() if "shard" in target}
    before = applied(shards["compat-shard-1"])
    add_project(filer, venv_python(filer.new))
    # One lane for the wave: its probe moves from shard 2 to shard 3 on settings that read a DATABASE_URL.
    grouped = cli("group", "add", "compat-shards", "--targets", ",".join(shards), "--canary", "1", "--wave-size", "2",
                  "--parallel", "1")  # fmt: skip
    assert grouped.returncode == 0, grouped.stderr

    started = cli("promote", "--project", project, "--through", "compat-group-staging,compat-shards", "--until-paused")
    assert started.returncode == 0, started.stderr
    run_id = started.stdout.split()[0]
    assert all(applied(url) == before for url in shards.values())
    assert cli("approve", run_id, "--approver", "ci", "--comment", "shards", "--acknowledge-risks").returncode == 0
    state = wait_for_run(run_id)

    assert state.is_completed(), state.message
    head = applied(urls["compat-group-staging"])
    assert head != before and "filer.0018_alter_file_options" in {f"{a}.{n}" for a, n in head}
    outcomes = {}
    for shard, url in shards.items():
        assert applied(url) == head
        assert check_drift(load_project(project), load_target(shard)).differences == []
        (outcome,) = [r for r in read_records(load_target(shard), "fleet") if r["flow_run_id"] == run_id]
        outcomes[shard] = (outcome["wave"], outcome["outcome"])
    assert outcomes == {"compat-shard-1": (0, "migrated"), "compat-shard-2": (1, "migrated"),
                        "compat-shard-3": (1, "migrated")}  # fmt: skip
