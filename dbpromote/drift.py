"""Drift: a target's live schema against the one its recorded migrations produce, replayed into a scratch database
on the same server; and the migration files edited since dbpromote applied them."""

from __future__ import annotations

import time
from contextlib import ExitStack
from datetime import UTC, datetime
from functools import partial

import psycopg
from prefect.runtime import flow_run
from psycopg import sql

from dbpromote import catalog, replays, rls
from dbpromote.catalog import Naming, Snapshot, compare, snapshot
from dbpromote.config import DatabaseTarget, DjangoProject
from dbpromote.errors import ConfigError, MigrationError, PreflightError
from dbpromote.models.drift import Difference, DriftReport
from dbpromote.planning import check_conflicts, plan_answer
from dbpromote.postgres import connect, server_connection
from dbpromote.probe import PROBE, FailureAnswer, ProbeSession, StepAnswer, run_probe
from dbpromote.probe.protocol import PlanAnswer
from dbpromote.records import read_migration_files, record_migration_files
from dbpromote.restores import create_scratch, drop_scratch, scratch_name
from dbpromote.rls import bring_rls_up_to_date, repaired_by_rls_step


def check_drift(
    project: DjangoProject,
    target: DatabaseTarget,
    read_history: bool = True,
    plus: tuple[str, str] | None = None,
    probe: ProbeSession | None = None,
) -> DriftReport:
    """Every object of the live schema compared with the replay of exactly the migrations its django_migrations
    records (RLS applied as a promotion applies it), and (read_history: from the records in the target's bucket)
    every applied migration file with the hash it had. With plus, the replay applies that migration too: is its
    effect already on the target? `probe`: a session of the project's already started (a promotion's)."""
    started = time.monotonic()
    with connect(target) as conn:
        live = snapshot(conn, target.app_role)
    with ExitStack() as stack:
        probe = probe or stack.enter_context(ProbeSession(project, target))
        history, expected, reused = replayed(probe, target, extensions(live), plus)
    differences = compare(
        governed(expected, target),
        governed(live, target),
        partial(repaired_by_rls_step, target),
        Naming(frozenset(history.explicit_names), frozenset(history.names_used_later), frozenset(history.django_named)),
    )
    differences += orphaned_rows(history)
    if read_history:
        differences += edited_files(target, history)
    return DriftReport(
        target=target.name,
        replayed=len(history.applied) + bool(plus),
        reused=reused,
        differences=differences,
        duration_s=round(time.monotonic() - started, 3),
        checked_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )


def replayed(
    probe: ProbeSession,
    target: DatabaseTarget,
    extensions: dict[str, str],
    plus: tuple[str, str] | None,
) -> tuple[PlanAnswer, Snapshot, bool]:
    """The target's recorded history, the schema it produces, and whether that schema was one kept from a replay
    of the same history (dbpromote/replays.py). Otherwise it is replayed into a scratch database on the target's
    server (with the live database's extensions, which a DBA may have created outside any migration), RLS brought
    up to date as a promotion does, read, kept, and the scratch database dropped whatever happens.

    The probe reads the history on the target and replays it into the scratch database (on the same server, as the
    same role: only the database's name differs)."""
    with server_connection(target) as server:
        key_salt = replays.salt(target, server_settings(server, target.database), extensions, SCHEMA_CODE)

        def ask(into: str, cache: str) -> PlanAnswer:
            answer = probe.replay(target, ":".join(plus) if plus else "", into, cache, key_salt)
            return history_of(answer, probe.project, target.name)

        history = ask("", str(replays.cache_dir()))
        if history.replay == "cached" and (kept := replays.read(history.replay_key)):
            return history, kept.schema, True
        scratch = scratch_name(target.database, "drift")
        copy = target.on_database(scratch)
        create_scratch(server, target.database, scratch, f"drift check of {target.name}")
        try:
            with connect(copy) as conn:
                for name, version in extensions.items():
                    create_extension(conn, name, version, target.name)
            history = ask(scratch, "")
            bring_rls_up_to_date(copy)
            with connect(copy) as conn:
                schema = snapshot(conn, target.app_role)
        finally:
            drop_scratch(server, scratch)
    replays.keep(history.replay_key, replays.Replay(schema, history.explicit_names, history.names_used_later))
    return history, schema, False


# This worker's code that makes a replayed schema and reads it: part of what a kept replay is kept under.
SCHEMA_CODE = [catalog.__file__, rls.__file__, PROBE]


def server_settings(server: psycopg.Connection, database: str) -> dict:
    """The server's version, the database's encoding and collation (a scratch database is created with them) and
    the role that will own it."""
    encoding, collate, ctype = server.execute(
        "SELECT pg_encoding_to_char(encoding), datcollate, datctype FROM pg_database WHERE datname = %s", [database]
    ).fetchone()
    version, owner = server.info.server_version, server.info.user
    return {"version": version, "encoding": encoding, "collate": collate, "ctype": ctype, "owner": owner}


def history_of(answer, project: DjangoProject, target_name: str) -> PlanAnswer:
    """The probe's answer to a replay request, or the error its failure means."""
    if isinstance(answer, FailureAnswer) and answer.reason == "error":
        raise ConfigError(
            f"The migrations applied on {target_name} cannot be replayed into a scratch database "
            f"({answer.message}); fix the migration that fails, or check drift on a server where the "
            "migration role may create databases and the extensions the migrations need."
        )
    history = plan_answer(answer, project, target_name)
    check_conflicts(history)
    return history


def create_extension(conn: psycopg.Connection, name: str, version: str, target_name: str) -> None:
    try:
        conn.execute(
            sql.SQL("CREATE EXTENSION IF NOT EXISTS {} VERSION {}").format(sql.Identifier(name), sql.Literal(version))
        )
        conn.commit()
    except psycopg.Error as error:
        raise ConfigError(
            f"The extension {name} of {target_name} cannot be created in the drift check's scratch database "
            f"({str(error).strip()}); make it trusted or let the migration role create it."
        ) from None


def extensions(schema: Snapshot) -> dict[str, str]:
    return {name: o["version"] for (kind, name), o in schema.items() if kind == "extension" and name != "plpgsql"}


def governed(schema: Snapshot, target: DatabaseTarget) -> Snapshot:
    """The schema without the application role's grants on tables without the tenant column: those depend on when
    default privileges were first set (before or after a table was made), which no replay can know. On tenant
    tables the RLS step governs them, so there they count."""
    suffix = f".{target.tenant_column}"
    tenant = {name.removesuffix(suffix) for kind, name in schema if kind == "column" and name.endswith(suffix)}
    return {key: attributes for key, attributes in schema.items() if key[0] != "grant" or key[1] in tenant}


def edited_files(target: DatabaseTarget, history: PlanAnswer) -> list[Difference]:
    """Applied migrations whose file changed since dbpromote applied it (the hashes in the target's ledger). A
    ledger entry older than the row's own `applied` time describes an earlier application (the database was
    recreated or restored and migrated since by someone else): that migration is not judged."""
    ledger = read_migration_files(target)
    judged = {
        label: entry["sha256"]
        for label, entry in ledger.items()
        if label in history.file_hashes and label in history.applied_at
        and _aware(entry["recorded_at"]) >= _aware(history.applied_at[label])
    }  # fmt: skip
    return [
        Difference(
            object=f"migration {label}",
            kind="edited",
            expected=f"file sha256 {recorded} when applied",
            live=f"file sha256 {history.file_hashes[label]} now",
            fix="restore the file as it was applied (the schema was made by that version); put changes in a new "
            "migration",
        )
        for label, recorded in sorted(judged.items())
        if recorded != history.file_hashes[label]
    ]


def _aware(text: str) -> datetime:
    """A time as ISO 8601; without an offset (a project with USE_TZ = False), UTC."""
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def orphaned_rows(history: PlanAnswer) -> list[Difference]:
    """django_migrations rows of the project's apps that no migration file accounts for."""
    return [
        Difference(
            object=f"migration {app}.{name}",
            kind="orphaned",
            live="recorded in django_migrations, no migration file",
            fix=f"restore the file; if it was renamed, delete the row and `manage.py migrate {app} NEW_NAME --fake`",
        )
        for app, name in history.unknown_applied
    ]


def fake_apply(project: DjangoProject, target: DatabaseTarget, label: str, file_hash: str) -> None:
    """`migrate APP NAME --fake` on the target, and its file's hash recorded as for any migration applied."""
    app, _, name = label.partition(".")
    answer = run_probe(project, target, "fake", "--to", f"{app}:{name}")
    if not isinstance(answer, StepAnswer):
        raise MigrationError(
            f"{label} could not be recorded as applied on {target.name} ({answer.message}); nothing was recorded: "
            "fix the error and reconcile again."
        )
    record_migration_files(target, str(flow_run.get_id() or ""), {label: file_hash}, reconciled=True)


def check_next(pending: list[str], applied: list[str], label: str, target: str) -> None:
    """A PreflightError unless `label` is the next migration to apply on the target (its pending ones in order,
    and those applied), saying which it is instead: applied already, not the project's, or not the next."""
    if label in applied:
        raise PreflightError(f"{label} is already applied on {target}; there is nothing to reconcile.")
    if label not in pending:
        raise PreflightError(
            f"{label} is not a migration of the project (none of its files is that); name the migration whose effect "
            "was applied by hand as APP:NAME, e.g. --migration core:0002_featureflag."
        )
    if pending[0] != label:
        raise PreflightError(
            f"{label} is not the next migration to apply on {target} (next: {pending[0]}); reconcile the next one "
            "first, or let a promotion apply it."
        )
