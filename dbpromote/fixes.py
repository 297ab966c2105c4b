"""A guarded data fix on one target: a dry run that is rolled back, the real run with every changed row's
before-image in the bucket before it commits, and the undo that puts those rows back.

Rows are seen by capture triggers (AFTER ... FOR EACH ROW, a function in the session's pg_temp writing to a
temporary table), created inside the fix's own transaction on exactly the tables the script changes and gone with
it: nothing is left on the database, and a script that is ORM-free SQL or anything else is counted alike. Which
tables those are comes from the transaction's own statistics (pg_stat_xact_user_tables) of a first pass that is
rolled back: a trigger's lock (SHARE ROW EXCLUSIVE) is taken only on a table the script writes anyway.
"""

from __future__ import annotations

import json

import psycopg
import zstandard
from psycopg import sql
from pydantic import BaseModel

from dbpromote.config import DatabaseTarget, DjangoProject, load_target
from dbpromote.errors import FixError, InputError
from dbpromote.gcs import gcs_client, gcs_retry
from dbpromote.locks import LocksBusy, retrying_locks
from dbpromote.models.fix import SAMPLE_KEYS, BatchedStatement, FixRun, FixScript, RowBounds, TableChanges
from dbpromote.postgres import connect
from dbpromote.probe import ProbeFailure, ProbeTransaction
from dbpromote.probe.protocol import LOCK_SQLSTATES
from dbpromote.records import read_records
from dbpromote.run_context import run_logger

# What a fix leaves when its locks were never granted: each attempt rolled back.
NOTHING_COMMITTED = "nothing was committed"
CHANGES = sql.Identifier("pg_temp", "dbpromote_fix_changes")
CAPTURE = sql.Identifier("pg_temp", "dbpromote_fix_capture")
TRIGGER = sql.Identifier("dbpromote_fix_capture")


def dry_run_fix(target: DatabaseTarget, script: FixScript, tenants: list[str], project: DjangoProject) -> FixRun:
    """What the script would change on the target, per table, with a few changed rows' keys; all rolled back."""

    def attempt(_: int) -> FixRun:
        with fix_transaction(target, script, project) as conn:
            changes = run_captured(conn, target, script, tenants)
            conn.rollback()
        return FixRun(target=target.name, script_hash=script.hash, tenants=tenants, tables=summarise(changes), dry=True)

    return retrying_locks(target, f"The fix {script.name}", attempt, NOTHING_COMMITTED)


def apply_fix(
    target: DatabaseTarget,
    script: FixScript,
    tenants: list[str],
    approved: FixRun,
    bounds: RowBounds,
    project: DjangoProject,
    fix_id: str,
    batch_size: int = 0,
) -> FixRun:
    """The script for real, each transaction committed only after the before-image of every row it changed is in
    the bucket, with its transaction id: a run carrying on a crashed one learns from the server which committed.
    Whole, in one transaction committed only when it changed exactly what the dry run counted (the data may have
    moved since) within the bounds; with batch_size, in keyset batches carried on after the last committed one,
    each logged."""
    images = BeforeImages(target, fix_id)
    earlier = images.committed()
    if batch_size:
        return BatchedFix(target, script, tenants, batch_size).run(approved, bounds, images, earlier)
    if earlier:  # the crashed run committed it and died before recording it
        return images.fix_run(script, tenants, earlier)

    def attempt(_: int) -> FixRun:
        with fix_transaction(target, script, project) as conn:
            changes = run_captured(conn, target, script, tenants)
            done = FixRun(
                target=target.name, script_hash=script.hash, tenants=tenants, tables=summarise(changes), dry=False
            )
            if not done.same_counts(approved) or not bounds.admits(done.rows):
                conn.rollback()
                raise FixError(
                    f"The fix changed other rows on {target.name} than its dry run counted ({done.rows} rows, dry "
                    f"run {approved.rows}: the data changed in between); nothing was committed: run the fix again."
                )
            images.save(conn, Batch(number=1, changes=changes))
            conn.commit()
        return images.fix_run(script, tenants, [Batch(number=1, changes=changes)])

    return retrying_locks(target, f"The fix {script.name}", attempt, NOTHING_COMMITTED)


class BatchedFix:
    """One UPDATE or DELETE in keyset batches, each its own transaction, after the batches already committed. A
    batch that would take the rows changed in this run past the dry run's count (or the total past the bounds) is
    rolled back and stops the fix: the data changed since the approval."""

    def __init__(
        self,
        target: DatabaseTarget,
        script: FixScript,
        tenants: list[str],
        size: int,
    ):
        self.target, self.script, self.tenants = target, script, tenants
        self.statement = BatchedStatement(script.source, size)

    def run(self, approved: FixRun, bounds: RowBounds, images: BeforeImages, done: list[Batch]) -> FixRun:
        """Batches until none is left; the fix as done over all of them, those of earlier runs included."""
        counted = sum(len(batch.changes) for batch in done)
        most = counted + approved.rows  # the rows changed before this run, and what its dry run counted
        while True:
            number = len(done) + 1
            after = done[-1].last_key if done else None
            batch = retrying_locks(
                self.target,
                f"Batch {number} of the fix {self.script.name}",
                lambda _, n=number, a=after, c=counted: self.next_batch(n, a, images, bounds, c, most),
                NOTHING_COMMITTED,
            )
            if batch is None:
                return images.fix_run(self.script, self.tenants, done)
            counted += len(batch.changes)
            done.append(batch)
            run_logger().info("batch %d committed on %s: %d rows", number, self.target.name, len(batch.changes))

    def next_batch(
        self, number: int, after: list[str] | None, images: BeforeImages, bounds: RowBounds, rows: int, most: int
    ) -> Batch | None:
        """The next batch committed, with its before-images saved first, unless it would take the rows changed so
        far past `most` or the bounds; None when no row is left after `after`."""
        with fix_transaction(self.target) as conn:
            try:
                key = check_undoable(conn, self.statement.table, self.target.name)
                keys = conn.execute(self.statement.next_keys(key, after)).fetchall()
            except psycopg.errors.LockNotAvailable:
                raise LocksBusy from None
            if not keys:
                return None
            last = list(keys[-1])
            part = FixScript(name=self.script.name, source=self.statement.between(key, after, last))
            changes = run_captured(conn, self.target, part, self.tenants)
            rows += len(changes)
            if rows > most or not bounds.admits_at_most(rows):
                conn.rollback()
                raise FixError(
                    f"Batch {number} of the fix would take the rows it changed on {self.target.name} to "
                    f"{rows}, past its dry run's count ({most}) or --expect-rows {bounds}: the data changed "
                    f"since the dry run. Batches 1 to {number - 1} are committed: undo them with "
                    f"`dbpromote fix-undo {images.fix_id} --target {self.target.name}`, or run the fix again."
                )
            batch = Batch(number=number, last_key=last, changes=changes)
            images.save(conn, batch)
            conn.commit()
        return batch


class Batch(BaseModel):
    """One committed transaction of a fix: the rows it changed, in order, and (batched) the last key it covered."""

    number: int
    changes: list[tuple]
    last_key: list[str] | None = None


class BeforeImages:
    """A fix's before-images on one target: one zstd-compressed JSON-lines object per transaction, beside the
    target's records and backups (and like them never deleted by dbpromote, except an aborted transaction's). Each
    object's first line names its transaction; the server says whether that committed (txid_status, PostgreSQL's
    answer to "did my COMMIT happen?" after a lost connection)."""

    def __init__(self, target: DatabaseTarget, fix_id: str):
        self.target, self.fix_id = target, fix_id
        self.folder = f"{target.prefix}/{target.name}/before-images/{fix_id}/"
        self.uri = f"gs://{target.bucket}/{self.folder}"

    def save(self, conn: psycopg.Connection | ProbeTransaction, batch: Batch) -> None:
        """Before the commit: the batch's rows as they were and became, and the transaction they are changed in."""
        (xid,) = conn.execute("SELECT txid_current()").fetchone()
        header = {"batch": batch.number, "xid": xid, "last_key": batch.last_key}
        lines = [json.dumps(header)]
        lines += (json.dumps({"table": t, "op": op, "old": old, "new": new}) for t, op, old, new in batch.changes)
        body = zstandard.ZstdCompressor().compress("\n".join(lines).encode())
        blob = (
            gcs_client(self.target.gcp_credentials)
            .bucket(self.target.bucket)
            .blob(f"{self.folder}{batch.number:06d}.jsonl.zst")
        )
        blob.upload_from_string(body, content_type="application/zstd", retry=gcs_retry())

    def exist(self) -> bool:
        """Whether any transaction of this fix got as far as its before-images here (so, past its approval)."""
        return any(self._names())

    def committed(self) -> list[Batch]:
        """The batches whose transactions committed, in order; an aborted one's object is deleted (it describes
        nothing that happened)."""
        batches = []
        with connect(self.target) as conn:
            for name, (header, *rows) in ((name, self._read(name)) for name in self._names()):
                (status,) = conn.execute("SELECT txid_status(%s)", [header["xid"]]).fetchone()
                if status == "aborted":
                    gcs_client(self.target.gcp_credentials).bucket(self.target.bucket).blob(name).delete(
                        retry=gcs_retry()
                    )
                    continue
                if status != "committed":
                    raise FixError(
                        f"Batch {header['batch']} of fix {self.fix_id} on {self.target.name} is in transaction "
                        f"{header['xid']}, which is {status or 'too old for the server to tell'}; nothing more was "
                        "run: end the crashed run's session (pg_stat_activity) and carry on again, or check the rows "
                        "and undo the fix."
                    )
                changes = [(r["table"], r["op"], r["old"], r["new"]) for r in rows]
                batches.append(Batch(number=header["batch"], changes=changes, last_key=header["last_key"]))
        return batches

    def fix_run(self, script: FixScript, tenants: list[str], batches: list[Batch]) -> FixRun:
        tables = summarise([change for batch in batches for change in batch.changes])
        return FixRun(
            target=self.target.name,
            script_hash=script.hash,
            tenants=tenants,
            tables=tables,
            dry=False,
            before_images=self.uri,
            batches=len(batches),
        )

    def _names(self) -> list[str]:
        blobs = gcs_client(self.target.gcp_credentials).list_blobs(
            self.target.bucket, prefix=self.folder, retry=gcs_retry()
        )
        return sorted(blob.name for blob in blobs)

    def _read(self, name: str) -> list[dict]:
        body = (
            gcs_client(self.target.gcp_credentials)
            .bucket(self.target.bucket)
            .blob(name)
            .download_as_bytes(retry=gcs_retry())
        )
        text = zstandard.ZstdDecompressor().decompressobj().decompress(body).decode()
        return [json.loads(line) for line in text.splitlines() if line]

    def rows(self) -> list[dict]:
        """Every row the fix changed here, from all its committed transactions, in the order they changed."""
        return [row for name in self._names() for row in self._read(name)[1:]]


def fix_transaction(
    target: DatabaseTarget, script: FixScript | None = None, project: DjangoProject | None = None
) -> psycopg.Connection | ProbeTransaction:
    """The transaction a fix runs in, with the target's lock_timeout and statement_timeout: the migration role's
    own connection for SQL; for a Python script, the project's connection in its own interpreter (the probe),
    driven with the same statements."""
    if script is not None and script.python:
        return ProbeTransaction(project, target, script.source)
    # As the probe gives them to a migration's session: libpq options, set before the first statement.
    timeouts = f"-c lock_timeout={target.lock_timeout_ms} -c statement_timeout={target.statement_timeout_ms}"
    return connect(target, options=timeouts)


def run_captured(
    conn: psycopg.Connection | ProbeTransaction,
    target: DatabaseTarget,
    script: FixScript,
    tenants: list[str],
) -> list[tuple]:
    """Run the script twice in this transaction: first to learn which tables it writes (then rolled back to a
    savepoint), then with capture triggers on those tables. The captured rows: (table, op, old row, new row)."""
    conn.execute("SAVEPOINT dbpromote_fix_probe")
    run_script(conn, target, script, tenants)
    tables = [
        table
        for (table,) in conn.execute(
            """
            SELECT quote_ident(schemaname) || '.' || quote_ident(relname) FROM pg_stat_xact_user_tables
            WHERE n_tup_ins + n_tup_upd + n_tup_del > 0 AND schemaname NOT LIKE 'pg\\_temp%%'
            """
        )
    ]
    conn.execute("ROLLBACK TO SAVEPOINT dbpromote_fix_probe")
    # n keeps the order the rows changed in: undo walks it backwards (a child's row back after its parent's).
    conn.execute(
        sql.SQL(
            "CREATE TEMP TABLE {} (n bigint GENERATED ALWAYS AS IDENTITY, tbl text, op text, old jsonb, new jsonb) "
            "ON COMMIT DROP"
        ).format(CHANGES)
    )
    conn.execute(
        sql.SQL(
            "CREATE FUNCTION {}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "INSERT INTO {} (tbl, op, old, new) VALUES "
            "(quote_ident(TG_TABLE_SCHEMA) || '.' || quote_ident(TG_TABLE_NAME), TG_OP, "
            "CASE WHEN TG_OP <> 'INSERT' THEN to_jsonb(OLD) END, CASE WHEN TG_OP <> 'DELETE' THEN to_jsonb(NEW) END); "
            "RETURN NULL; END $$"
        ).format(CAPTURE, CHANGES)
    )
    conn.execute(sql.SQL("GRANT INSERT ON {} TO {}").format(CHANGES, sql.Identifier(target.app_role)))
    for table in tables:
        check_undoable(conn, table, target.name)
        conn.execute(
            sql.SQL(
                "CREATE TRIGGER {} AFTER INSERT OR UPDATE OR DELETE ON {} FOR EACH ROW EXECUTE FUNCTION {}()"
            ).format(TRIGGER, sql.SQL(table), CAPTURE)
        )
    run_script(conn, target, script, tenants)
    captured = sql.SQL("SELECT tbl, op, old::text, new::text FROM {} ORDER BY n").format(CHANGES)
    changes = [(t, op, _json(old), _json(new)) for t, op, old, new in conn.execute(captured).fetchall()]
    for table in tables:  # gone before the commit: nothing of the capture outlives the fix
        conn.execute(sql.SQL("DROP TRIGGER {} ON {}").format(TRIGGER, sql.SQL(table)))
    return changes


def run_script(
    conn: psycopg.Connection | ProbeTransaction,
    target: DatabaseTarget,
    script: FixScript,
    tenants: list[str],
) -> None:
    """The script as the migration role (unscoped) or, per tenant, as the application role with the tenant
    setting set: RLS then confines every statement (the ORM's too) to that tenant's rows."""
    tenant = None
    try:
        for tenant in tenants or [None]:
            if tenant is not None:
                conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(target.app_role)))
                conn.execute("SELECT set_config(%s, %s, true)", [target.tenant_setting, tenant])
            if script.python:
                conn.run_python()
            else:
                conn.execute(script.source)
            conn.execute("RESET ROLE")
    except (psycopg.Error, ProbeFailure) as error:
        lock = isinstance(error, psycopg.errors.LockNotAvailable) or (
            isinstance(error, ProbeFailure) and error.failure.sqlstate in LOCK_SQLSTATES
        )
        if lock:
            raise LocksBusy from None
        scope = f" as {target.app_role} for tenant {tenant}" if tenant is not None else ""
        raise FixError(
            f"The fix {script.name} failed on {target.name}{scope} ({str(error).strip().splitlines()[0]}); nothing "
            "was committed: correct the script and run the fix again."
        ) from None


def _json(text: str | None):
    return None if text is None else json.loads(text)


def check_undoable(conn: psycopg.Connection, table: str, target_name: str) -> list[str]:
    """The table's primary key: how undo finds a row again."""
    key = primary_key(conn, table)
    if not key:
        raise FixError(
            f"The fix changes {table} on {target_name}, which has no primary key, so its rows could not be put back "
            "by `dbpromote fix-undo`; nothing was committed: give the table a primary key, or restore a backup "
            "to undo a fix of it."
        )
    return key


def primary_key(conn: psycopg.Connection, table: str) -> list[str]:
    return [
        column
        for (column,) in conn.execute(
            """
            SELECT a.attname FROM pg_index i
            JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
            WHERE i.indrelid = %s::regclass AND i.indisprimary ORDER BY array_position(i.indkey, a.attnum)
            """,
            [table],
        )
    ]


COUNTED_AS = {"INSERT": "inserted", "UPDATE": "updated", "DELETE": "deleted"}


def summarise(changes: list[tuple]) -> list[TableChanges]:
    """Counts per table and operation, and the first few changed rows' ids."""
    tables: dict[str, TableChanges] = {}
    for table, op, old, new in changes:
        summary = tables.setdefault(table, TableChanges(table=table))
        setattr(summary, COUNTED_AS[op], getattr(summary, COUNTED_AS[op]) + 1)
        row = new or old
        if len(summary.sample_keys) < SAMPLE_KEYS and "id" in row:
            summary.sample_keys.append(str(row["id"]))
    return list(tables.values())


def undo_fix(target: DatabaseTarget, fix_id: str) -> int:
    """Each row the fix changed put back as it was (inserted ones deleted, deleted ones inserted again), in one
    transaction; refused, naming the rows, where a row is no longer what the fix left. The rows put back."""
    rows = BeforeImages(target, fix_id).rows()
    return retrying_locks(target, "The undo", lambda _: put_back(target, rows), "nothing was put back")


def put_back(target: DatabaseTarget, rows: list[dict]) -> int:
    """One attempt at the undo, in one transaction."""
    try:
        with fix_transaction(target) as conn:
            return put_back_rows(conn, target.name, rows)
    except psycopg.errors.LockNotAvailable:
        raise LocksBusy from None


def put_back_rows(conn: psycopg.Connection, target_name: str, rows: list[dict]) -> int:
    """Each captured row back as it was, the last change first; refused as a whole if any changed since."""
    keys = {row["table"]: primary_key(conn, row["table"]) for row in rows}
    changed_since = []
    for row in reversed(rows):  # the last change to a row first
        table, key = row["table"], keys[row["table"]]
        image = row["new"] or row["old"]
        where = sql.SQL(" AND ").join(
            sql.SQL("{} = (jsonb_populate_record(NULL::{}, %s)).{}").format(
                sql.Identifier(c), sql.SQL(table), sql.Identifier(c)
            )
            for c in key
        )
        keyed = [json.dumps(image)] * len(key)
        current = conn.execute(
            sql.SQL("SELECT to_jsonb(t) FROM {} t WHERE {}").format(sql.SQL(table), where), keyed
        ).fetchone()
        if (current[0] if current else None) != row["new"]:
            changed_since.append(f"{table} {', '.join(str(image[c]) for c in key)}")
        else:
            _put_back(conn, row, sql.SQL(table), where, keyed)
    if changed_since:
        conn.rollback()
        named = ", ".join(changed_since[:5]) + (" ..." if len(changed_since) > 5 else "")
        raise FixError(
            f"{len(changed_since)} row(s) on {target_name} changed again since the fix ({named}); nothing was "
            "put back: restore the backup taken before the fix, or put those rows back by hand."
        )
    conn.commit()
    return len(rows)


def _put_back(conn: psycopg.Connection, row: dict, table: sql.SQL, where: sql.Composable, keyed: list) -> None:
    """One captured row undone: an inserted one deleted, a deleted one inserted again, an updated one set back."""
    if row["op"] == "INSERT":
        conn.execute(sql.SQL("DELETE FROM {} WHERE {}").format(table, where), keyed)
    elif row["op"] == "DELETE":
        conn.execute(
            sql.SQL("INSERT INTO {} SELECT * FROM jsonb_populate_record(NULL::{}, %s)").format(table, table),
            [json.dumps(row["old"])],
        )
    else:
        conn.execute(
            sql.SQL("UPDATE {} t SET ({}) = (SELECT {} FROM jsonb_populate_record(NULL::{}, %s) r) WHERE {}").format(
                table,
                sql.SQL(", ").join(sql.Identifier(c) for c in row["old"]),
                sql.SQL(", ").join(sql.SQL("r.") + sql.Identifier(c) for c in row["old"]),
                table,
                where,
            ),
            [json.dumps(row["old"]), *keyed],
        )


def check_fix_input(
    through: list[str], script: FixScript, batch_size: int, expect_rows: str = "", tenants: list[str] | None = None
) -> None:
    """Refuse, before anything runs, a fix that cannot be run as asked: one sentence naming the fix."""
    unbounded = script.unbounded() if not expect_rows and not tenants else []
    if unbounded:
        raise InputError(
            f"{script.name} changes every row of {', '.join(unbounded)} (an UPDATE or DELETE without WHERE), for no "
            "tenant and with no bound; say how many rows it may change on each target with --expect-rows MIN..MAX "
            "(e.g. --expect-rows 1..500), or add a WHERE."
        )
    if batch_size and script.python:
        raise InputError(
            f"--batch-size runs one SQL UPDATE or DELETE in batches, and {script.name} is Python; batch it in the "
            "script itself, or run it without --batch-size."
        )
    if batch_size:
        BatchedStatement(script.source, batch_size)
    if not through:
        raise InputError("No environments given; pass them in order, staging first, e.g. --through staging,production.")
    if load_target(through[0]).requires_approval:
        raise InputError(
            f"{through[0]} requires approval, so it cannot come first: a fix runs on a staging target first; put one "
            f"first, e.g. --through staging,{through[0]}."
        )


def fix_to_undo(database: DatabaseTarget, fix_run: str) -> dict:
    """The record of the fix run on the target, with the before-images an undo puts back; checked by the CLI too,
    so a wrong id is refused before any run is created."""
    found = [r for r in read_records(database, "fixes") if r["flow_run_id"] == fix_run]
    if not found or not found[0].get("before_images"):
        raise InputError(
            f"No fix run {fix_run} with before-images is recorded on {database.name}; `dbpromote journal "
            f"{database.name}` lists the fixes made there."
        )
    return found[0]
