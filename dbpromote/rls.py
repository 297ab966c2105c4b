"""Row-Level Security: every tenant table gets its policy and grants, and isolation is proven as the application."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable
from typing import NamedTuple

import psycopg
from psycopg import sql

from dbpromote.config import DatabaseTarget
from dbpromote.errors import ConfigError, VerificationError
from dbpromote.models.report import Coverage, Isolation, TableCoverage, TableProof
from dbpromote.postgres import connect

TABLE_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE")
POLICY_PREFIX = "tenant_isolation_"


def policy_name(table: str) -> str:
    return (POLICY_PREFIX + table)[:63]


def repaired_by_rls_step(
    target: DatabaseTarget, key: tuple[str, str], expected: dict | None, live: dict | None
) -> bool:
    """A drift the RLS step of every promotion brings up to date (so it must not stop the promotion that repairs
    it): RLS off on a tenant table, dbpromote's own policy missing or edited, the application role's grant missing
    or narrowed. An extra policy, an extra grant, RLS on where none belongs: no promotion touches those."""
    kind, name = key
    if kind == "table" and expected and live:
        changed = {attribute for attribute in expected if expected[attribute] != live.get(attribute)}
        return expected["rls"] and not live["rls"] and changed <= {"rls", "force_rls"}
    if kind == "policy" and expected:
        schema, table, policy = name.split(".", 2)
        return schema == target.schema_name and policy == policy_name(table)
    if kind == "grant" and expected:
        return live is None or set(live["privileges"].split(", ")) < set(expected["privileges"].split(", "))
    return False


def tenant_predicate(column: str, setting: str, column_type: str) -> sql.Composed:
    # An unset or empty setting must see nothing, not fail the cast: NULLIF turns '' into NULL, NULL matches no row.
    return sql.SQL("({} = NULLIF(current_setting({}, true), '')::{})").format(
        sql.Identifier(column), sql.Literal(setting), sql.SQL(column_type)
    )


def tenant_tables(conn: psycopg.Connection, schema: str, column: str) -> dict[str, str]:
    """Ordinary and partitioned tables of the schema with the tenant column: {table: column type}."""
    rows = conn.execute(
        """
        SELECT c.relname, format_type(a.atttypid, a.atttypmod)
        FROM pg_class c
        JOIN pg_namespace n ON n.oid = c.relnamespace
        JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = %s AND NOT a.attisdropped
        WHERE n.nspname = %s AND c.relkind IN ('r', 'p') AND NOT c.relispartition
        ORDER BY c.relname
        """,
        [column, schema],
    ).fetchall()
    return dict(rows)


def check_app_role(conn: psycopg.Connection, target: DatabaseTarget, tables: list[str]) -> list[str]:
    """What makes the application role see past policies: superuser, BYPASSRLS, owning a tenant table."""
    role = conn.execute("SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = %s", [target.app_role]).fetchone()
    if role is None:
        return [
            f"the application role {target.app_role!r} does not exist: create it (LOGIN, NOSUPERUSER, "
            "NOBYPASSRLS) or set the target's app_role"
        ]
    problems = []
    if role[0]:
        problems.append(
            f"{target.app_role} is a superuser, which bypasses every policy: ALTER ROLE {target.app_role} NOSUPERUSER"
        )
    if role[1]:
        problems.append(f"{target.app_role} has BYPASSRLS: ALTER ROLE {target.app_role} NOBYPASSRLS")
    owned = [
        name
        for (name,) in conn.execute(
            """
            SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = %s AND c.relname = ANY(%s) AND pg_get_userbyid(c.relowner) = %s
            """,
            [target.schema_name, tables, target.app_role],
        )
    ]
    if owned:
        problems.append(
            f"{target.app_role} owns {', '.join(owned)}, and owners bypass policies: "
            "ALTER TABLE ... OWNER TO the migration role"
        )
    return problems


def inspect_coverage(conn: psycopg.Connection, target: DatabaseTarget) -> Coverage:
    tables = tenant_tables(conn, target.schema_name, target.tenant_column)
    state = {
        name: (enabled, forced)
        for name, enabled, forced in conn.execute(
            """
            SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity FROM pg_class c
            JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = ANY(%s)
            """,
            [target.schema_name, list(tables)],
        )
    }
    policies = {
        (table, name): (cmd, permissive, roles, qual, check)
        for table, name, cmd, permissive, roles, qual, check in conn.execute(
            """
            SELECT tablename, policyname, cmd, permissive, roles::text[], qual, with_check
            FROM pg_policies WHERE schemaname = %s AND policyname LIKE %s
            """,
            [target.schema_name, POLICY_PREFIX + "%"],
        )
    }
    missing = _missing_grants(conn, target, list(tables))
    coverage = []
    for table, column_type in tables.items():
        expected = _expected_expression(conn, target, column_type)
        found = policies.get((table, policy_name(table)))
        if found is None:
            policy = "missing"
        elif found == ("ALL", "PERMISSIVE", [target.app_role], expected, expected):
            policy = "current"
        else:
            policy = "drift"
        enabled, forced = state[table]
        coverage.append(
            TableCoverage(
                table=table,
                rls_enabled=enabled and forced == target.force_rls,
                policy=policy,
                missing_grants=missing.get(table, []),
            )
        )
    orphaned = sorted(f"{name} on {table}" for table, name in policies if table not in tables)
    return Coverage(target=target.name, tables=coverage, orphaned_policies=orphaned)


_expression_cache: dict[tuple, str] = {}


def _expected_expression(conn: psycopg.Connection, target: DatabaseTarget, column_type: str) -> str:
    """The predicate as pg_policies prints it, obtained from the server itself (its normal form, not our guess)."""
    key = (target.tenant_column, target.tenant_setting, column_type)
    if key not in _expression_cache:
        # A temporary table's policy in a rolled-back subtransaction: the catalog's rendering of our predicate.
        with conn.transaction(force_rollback=True):
            conn.execute(
                sql.SQL("CREATE TEMPORARY TABLE dbpromote_policy_shape ({} {})").format(
                    sql.Identifier(target.tenant_column), sql.SQL(column_type)
                )
            )
            conn.execute(
                sql.SQL("CREATE POLICY shape ON dbpromote_policy_shape USING {}").format(
                    tenant_predicate(target.tenant_column, target.tenant_setting, column_type)
                )
            )
            _expression_cache[key] = conn.execute(
                "SELECT qual FROM pg_policies WHERE tablename = 'dbpromote_policy_shape'"
            ).fetchone()[0]
    return _expression_cache[key]


def _missing_grants(conn: psycopg.Connection, target: DatabaseTarget, tables: list[str]) -> dict[str, list[str]]:
    """The table privileges the application role lacks, by table, in TABLE_PRIVILEGES' order: one query for every
    table (one a table and privilege was 216 round trips a fleet member's step, the sample's 27 tables twice)."""
    missing: dict[str, list[str]] = {}
    for table, privilege in conn.execute(
        """
        SELECT t.name, p.name FROM unnest(%s::text[]) AS t(name), unnest(%s::text[]) WITH ORDINALITY AS p(name, n)
        WHERE NOT has_table_privilege(%s, quote_ident(%s) || '.' || quote_ident(t.name), p.name) ORDER BY t.name, p.n
        """,
        [tables, list(TABLE_PRIVILEGES), target.app_role, target.schema_name],
    ):
        missing.setdefault(table, []).append(privilege)
    return missing


def bring_rls_up_to_date(target: DatabaseTarget) -> Coverage:
    """Every tenant table's RLS, policy and grants brought up to date, no DDL for what already matches (a drift
    check does it to a scratch database too); the coverage after, with what was done to each table."""
    with connect(target) as conn:
        tables = tenant_tables(conn, target.schema_name, target.tenant_column)
        problems = check_app_role(conn, target, list(tables))
        if problems:
            raise ConfigError(f"Tenant isolation cannot hold on {target.name}: {'; '.join(problems)}.")
        if target.force_rls:
            _refuse_force_if_migrations_would_see_nothing(conn, target)
        before = inspect_coverage(conn, target)
        sequences = _sequences_missing_grants(conn, target, list(tables))
        ddl = DDLCounter(conn)
        for table in before.tables:
            done = _bring_up_to_date(ddl, target, table, tables[table.table], sequences.get(table.table, []))
            table.action = ", ".join(done)
        if not _default_privileges_present(conn, target):
            _grant_default_privileges(ddl, target)
        conn.commit()
        after = inspect_coverage(conn, target)
    for table, was in zip(after.tables, before.tables, strict=True):
        table.action = was.action
    after.ddl_statements = ddl.statements
    return after


class DDLCounter:
    """Executes DDL on a connection and counts it: a re-run that finds everything current must issue none."""

    def __init__(self, conn: psycopg.Connection):
        self.conn, self.statements = conn, 0

    def execute(self, statement: sql.Composable) -> None:
        self.conn.execute(statement)
        self.statements += 1


def _bring_up_to_date(
    ddl: DDLCounter, target: DatabaseTarget, table: TableCoverage, column_type: str, sequences: list[str]
) -> list[str]:
    """RLS enabled (forced as configured), the policy current, the grants present (on the table and on
    `sequences`, its own that the application cannot use); what was done."""
    name = sql.Identifier(target.schema_name, table.table)
    role = sql.Identifier(target.app_role)
    actions = []
    if not table.rls_enabled:
        ddl.execute(sql.SQL("ALTER TABLE {} ENABLE ROW LEVEL SECURITY").format(name))
        force = "FORCE" if target.force_rls else "NO FORCE"
        ddl.execute(sql.SQL("ALTER TABLE {} {} ROW LEVEL SECURITY").format(name, sql.SQL(force)))
        actions.append("enabled")
    if table.policy != "current":
        policy = sql.Identifier(policy_name(table.table))
        if table.policy == "drift":
            ddl.execute(sql.SQL("DROP POLICY {} ON {}").format(policy, name))
        predicate = tenant_predicate(target.tenant_column, target.tenant_setting, column_type)
        ddl.execute(
            sql.SQL("CREATE POLICY {} ON {} AS PERMISSIVE FOR ALL TO {} USING {} WITH CHECK {}").format(
                policy, name, role, predicate, predicate
            )
        )
        actions.append("replaced (drift)" if table.policy == "drift" else "created")
    if table.missing_grants:
        privileges = sql.SQL(", ").join(sql.SQL(p) for p in table.missing_grants)
        ddl.execute(sql.SQL("GRANT {} ON {} TO {}").format(privileges, name, role))
        actions.append("granted")
    for sequence in sequences:
        sequence_name = sql.Identifier(target.schema_name, sequence)
        ddl.execute(sql.SQL("GRANT USAGE, SELECT ON SEQUENCE {} TO {}").format(sequence_name, role))
    return actions


def _grant_default_privileges(ddl: DDLCounter, target: DatabaseTarget) -> None:
    """Tables and sequences the migration role creates later are the application's to use too."""
    schema, role = sql.Identifier(target.schema_name), sql.Identifier(target.app_role)
    ddl.execute(
        sql.SQL("ALTER DEFAULT PRIVILEGES IN SCHEMA {} GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {}").format(
            schema, role
        )
    )
    ddl.execute(
        sql.SQL("ALTER DEFAULT PRIVILEGES IN SCHEMA {} GRANT USAGE, SELECT ON SEQUENCES TO {}").format(schema, role)
    )


def _refuse_force_if_migrations_would_see_nothing(conn, target: DatabaseTarget) -> None:
    bypasses = conn.execute("SELECT rolsuper OR rolbypassrls FROM pg_roles WHERE rolname = current_user").fetchone()[0]
    if not bypasses:
        user = conn.execute("SELECT current_user").fetchone()[0]
        raise ConfigError(
            f"force_rls on {target.name} would subject the migration role {user} to the tenant policies, so data "
            f"migrations (RunPython) would see no rows; turn force_rls off or ALTER ROLE {user} BYPASSRLS."
        )


def _sequences_missing_grants(conn, target: DatabaseTarget, tables: list[str]) -> dict[str, list[str]]:
    """The sequences owned by each of `tables` (serial and identity columns) that the application role cannot
    use, by table: one query for all of them."""
    missing: dict[str, list[str]] = {}
    for table, sequence in conn.execute(
        """
        SELECT t.relname, s.relname FROM pg_class s
        JOIN pg_depend d ON d.objid = s.oid AND d.deptype IN ('a', 'i')
        JOIN pg_class t ON t.oid = d.refobjid
        JOIN pg_namespace n ON n.oid = t.relnamespace
        WHERE s.relkind = 'S' AND n.nspname = %s AND t.relname = ANY(%s)
          AND NOT (has_sequence_privilege(%s, s.oid, 'USAGE') AND has_sequence_privilege(%s, s.oid, 'SELECT'))
        ORDER BY t.relname, s.relname
        """,
        [target.schema_name, tables, target.app_role, target.app_role],
    ):
        missing.setdefault(table, []).append(sequence)
    return missing


def _default_privileges_present(conn, target: DatabaseTarget) -> bool:
    return conn.execute(
        """
        SELECT count(*) = 2 FROM pg_default_acl d JOIN pg_namespace n ON n.oid = d.defaclnamespace
        WHERE n.nspname = %s AND d.defaclrole = (SELECT oid FROM pg_roles WHERE rolname = current_user)
          AND EXISTS (SELECT 1 FROM aclexplode(d.defaclacl) a WHERE a.grantee = (
                      SELECT oid FROM pg_roles WHERE rolname = %s))
        """,
        [target.schema_name, target.app_role],
    ).fetchone()[0]


def prove_isolation(target: DatabaseTarget, report: Callable[[Isolation], None] = lambda isolation: None) -> Isolation:
    """Act as the application role on every tenant table: no other tenant's row is visible or writable. `report`
    is given the proof, passed or not, before a failed one is refused."""
    with connect(target, autocommit=True) as conn:
        tables = tenant_tables(conn, target.schema_name, target.tenant_column)
        result = Isolation(
            target=target.name,
            tables=[],
            role_problems=check_app_role(conn, target, list(tables)),
            bypassing_views=_bypassing_views(conn, target, list(tables)),
        )
        member = conn.execute("SELECT pg_has_role(current_user, %s, 'MEMBER')", [target.app_role]).fetchone()[0]
        if not member:
            user = conn.execute("SELECT current_user").fetchone()[0]
            raise ConfigError(
                f"The migration role {user} cannot act as {target.app_role} to prove isolation on "
                f"{target.name}; GRANT {target.app_role} TO {user}."
            )
        for table, column_type in tables.items():
            result.tables.append(_prove_table(conn, target, table, column_type))
    report(result)
    if not result.passed:
        failed = [f"{t.table} ({t.detail})" for t in result.tables if not t.passed]
        raise VerificationError(
            f"Tenant isolation does not hold on {target.name}: "
            + "; ".join(failed + result.role_problems + [f"{v} bypasses the policies" for v in result.bypassing_views])
            + "; run the RLS step again or fix the role, then re-run."
        )
    return result


class Observed(NamedTuple):
    """What the application role saw and could do on one table with tenant A set (and with the setting unset)."""

    unset: int  # rows visible with the setting unset
    empty: int  # rows visible with the setting ''
    own: int  # tenant A's rows visible
    others: int  # other tenants' rows visible
    insert_refused: bool  # inserting a row of tenant B
    update_refused: bool  # moving a row to tenant B


def _prove_table(conn: psycopg.Connection, target: DatabaseTarget, table: str, column_type: str) -> TableProof:
    """All inside one rolled-back transaction: on rows of two tenants, made here (synthetic tenants too) when the
    table has fewer; where no synthetic row fits the table's constraints, its policy is checked in the catalog."""
    name = sql.Identifier(target.schema_name, table)
    unfit = None
    try:
        with conn.transaction(force_rollback=True):
            tenants = [
                row[0]
                for row in conn.execute(
                    sql.SQL("SELECT DISTINCT {} FROM {} LIMIT 2").format(sql.Identifier(target.tenant_column), name)
                )
            ]
            proven_by = "rows" if len(tenants) >= 2 else "synthetic rows"
            if len(tenants) < 2:
                try:
                    with conn.transaction():
                        tenants = _make_probe_rows(conn, target, table, tenants)
                except psycopg.Error as error:
                    unfit = str(error).strip().splitlines()[0]
            if unfit is None:
                conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(target.app_role)))
                observed = _observe_as_app(conn, target, name, column_type, *(str(t) for t in tenants[:2]))
    except psycopg.Error as error:
        return TableProof(table=table, passed=False, detail=f"probe failed: {error}".strip())
    if unfit is not None:
        return _proof_by_policy(conn, target, table, column_type, unfit)
    findings = _isolation_findings(observed)
    return TableProof(
        table=table,
        passed=not findings,
        detail="; ".join(findings)
        or "unset/empty sees 0 rows, other tenants invisible, cross-tenant insert and update refused",
        proven_by=proven_by,
    )


def _proof_by_policy(
    conn: psycopg.Connection, target: DatabaseTarget, table: str, column_type: str, unfit: str
) -> TableProof:
    """A table no synthetic row fits: RLS on and dbpromote's policy, for the application role, with exactly the
    expected tenant predicate in USING and WITH CHECK, read from the catalog."""
    expected = _expected_expression(conn, target, column_type)
    found = conn.execute(
        """
        SELECT c.relrowsecurity, p.cmd, p.permissive, p.roles::text[], p.qual, p.with_check
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        LEFT JOIN pg_policies p ON p.schemaname = n.nspname AND p.tablename = c.relname AND p.policyname = %s
        WHERE n.nspname = %s AND c.relname = %s
        """,
        [policy_name(table), target.schema_name, table],
    ).fetchone()
    holds = found is not None and found[0] and found[1:] == ("ALL", "PERMISSIVE", [target.app_role], expected, expected)
    verdict = "RLS on, its policy current" if holds else "its policy is not the tenant predicate, or RLS is off"
    return TableProof(
        table=table,
        passed=bool(holds),
        detail=f"proven from the catalog: {verdict} (no synthetic row fits the table: {unfit})",
        proven_by="policy",
    )


def _observe_as_app(
    conn: psycopg.Connection,
    target: DatabaseTarget,
    name: sql.Identifier,
    column_type: str,
    tenant_a: str,
    tenant_b: str,
) -> Observed:
    """Count what is visible unset, empty and as tenant A; try writing into tenant B (as the role set by the caller)."""
    column, setting = sql.Identifier(target.tenant_column), target.tenant_setting
    unset = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(name)).fetchone()[0]
    conn.execute("SELECT set_config(%s, '', true)", [setting])
    empty = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(name)).fetchone()[0]
    conn.execute("SELECT set_config(%s, %s, true)", [setting, tenant_a])
    counts = sql.SQL("SELECT count(*) FILTER (WHERE {c}::text = %s), count(*) FILTER (WHERE {c}::text <> %s) FROM {t}")
    own, others = conn.execute(counts.format(c=column, t=name), [tenant_a, tenant_a]).fetchone()
    insert = sql.SQL("INSERT INTO {} ({}) VALUES (%s::{})").format(name, column, sql.SQL(column_type))
    update = sql.SQL("UPDATE {t} SET {c} = %s::{ty} WHERE ctid = (SELECT ctid FROM {t} LIMIT 1)").format(
        t=name, c=column, ty=sql.SQL(column_type)
    )
    return Observed(
        unset=unset,
        empty=empty,
        own=own,
        others=others,
        insert_refused=_refused(conn, insert, [tenant_b]),
        update_refused=_refused(conn, update, [tenant_b]),
    )


def _isolation_findings(observed: Observed) -> list[str]:
    """Each way the observation shows tenants are not isolated; none when they are."""
    findings = []
    if observed.unset or observed.empty:
        findings.append(f"{observed.unset or observed.empty} rows visible with the tenant setting unset or empty")
    if observed.others:
        findings.append(f"{observed.others} rows of other tenants visible")
    if not observed.own:
        findings.append("the tenant's own rows are not visible")
    if not observed.insert_refused:
        findings.append("insert into another tenant allowed")
    if not observed.update_refused:
        findings.append("update into another tenant allowed")
    return findings


def _refused(conn: psycopg.Connection, statement: sql.Composable, params: list) -> bool:
    """True when the statement is refused by a row-level security policy (SQLSTATE 42501)."""
    try:
        with conn.transaction():
            conn.execute(statement, params)
    except psycopg.errors.InsufficientPrivilege as error:
        return "row-level security" in str(error)
    return False


class Column(NamedTuple):
    name: str
    type: str
    required: bool  # NOT NULL without a default: an INSERT must give it
    ref_table: str | None  # a foreign key's table (regclass text) and column
    ref_column: str | None


def _columns(conn: psycopg.Connection, relation: str) -> dict[str, Column]:
    """A table's columns (`relation` as regclass text), each with its foreign key where it has one."""
    rows = conn.execute(
        """
        SELECT a.attname, format_type(a.atttypid, a.atttypmod),
               a.attnotnull AND NOT (a.atthasdef OR a.attidentity <> '' OR a.attgenerated <> ''),
               fk.confrelid::regclass::text, fa.attname
        FROM pg_attribute a
        LEFT JOIN pg_constraint fk ON fk.conrelid = a.attrelid AND fk.contype = 'f' AND fk.conkey = ARRAY[a.attnum]
        LEFT JOIN pg_attribute fa ON fa.attrelid = fk.confrelid AND fa.attnum = fk.confkey[1]
        WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped
        """,
        [relation],
    ).fetchall()
    return {row[0]: Column(*row) for row in rows}


def _make_probe_rows(conn: psycopg.Connection, target: DatabaseTarget, table: str, tenants: list) -> list:
    """As the owner, inside the caller's rolled-back transaction: one row for each of two tenants. Where the tenant
    column refers to a table of tenants holding fewer than two, synthetic tenants are made there first (a new shard
    or region starts with none)."""
    relation = sql.Identifier(target.schema_name, table).as_string(conn)
    columns = _columns(conn, relation)
    tenant = columns[target.tenant_column]
    if tenant.ref_table:
        pool = [
            row[0]
            for row in conn.execute(
                sql.SQL("SELECT {} FROM {} LIMIT 2").format(
                    sql.Identifier(tenant.ref_column), sql.SQL(tenant.ref_table)
                )
            )
        ]
        while len(dict.fromkeys([*tenants, *pool])) < 2:
            pool.append(_synthetic_row(conn, tenant.ref_table, tenant.ref_column, {}))
    else:
        pool = [_distinct_value(tenant.type) for _ in range(2)]
    chosen = list(dict.fromkeys([*tenants, *pool]))[:2]
    for value in chosen:
        tenant_value = sql.SQL("{}::{}").format(sql.Literal(str(value)), sql.SQL(tenant.type))
        _synthetic_row(conn, relation, None, {target.tenant_column: tenant_value})
    return chosen


def _synthetic_row(
    conn: psycopg.Connection, relation: str, returning: str | None, given: dict[str, sql.Composable], depth: int = 0
):
    """Insert one row into `relation` with `given` values and a made-up value for every other column an INSERT
    must give (a row of a referenced table too, made the same way where it has none); the `returning` column's
    value."""
    if depth > 4:
        raise psycopg.DataError(f"foreign keys nest too deep to make a probe row of {relation}")
    names, values = [], []
    for column in _columns(conn, relation).values():
        if column.name in given:
            value = given[column.name]
        elif not column.required:
            continue
        elif column.ref_table:
            existing = conn.execute(
                sql.SQL("SELECT {}::text FROM {} LIMIT 1").format(
                    sql.Identifier(column.ref_column), sql.SQL(column.ref_table)
                )
            ).fetchone()
            key = existing[0] if existing else _synthetic_row(conn, column.ref_table, column.ref_column, {}, depth + 1)
            value = sql.SQL("{}::{}").format(sql.Literal(str(key)), sql.SQL(column.type))
        else:
            value = sql.SQL("{}::{}").format(sql.Literal(_distinct_value(column.type)), sql.SQL(column.type))
        names.append(sql.Identifier(column.name))
        values.append(value)
    insert = sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
        sql.SQL(relation), sql.SQL(", ").join(names), sql.SQL(", ").join(values)
    )
    if not names:
        insert = sql.SQL("INSERT INTO {} DEFAULT VALUES").format(sql.SQL(relation))
    if returning:
        insert += sql.SQL(" RETURNING {}::text").format(sql.Identifier(returning))
    row = conn.execute(insert).fetchone() if returning else conn.execute(insert)
    return row[0] if returning else None


_made = itertools.count(1)  # a fresh number for every made-up value: unique columns take two rows


def _distinct_value(column_type: str) -> str:
    """A made-up value of the type, different each call (for unique columns); numbers positive (a
    PositiveIntegerField's check) and high (never a real serial key of a young database)."""
    n = next(_made)
    if column_type == "smallint":
        return str(30_000 + n % 2_000)
    if column_type in ("integer", "bigint", "numeric", "double precision", "real"):
        return str(2_000_000_000 - n)
    if column_type == "boolean":
        return "false"
    if column_type in ("json", "jsonb"):
        return "{}"
    if column_type == "uuid":
        return str(uuid.uuid4())
    if column_type.startswith("timestamp"):
        return "2000-01-01T00:00:00Z"
    if column_type == "date":
        return "2000-01-01"
    if column_type == "interval":
        return "0"
    return f"dbpromote-probe-{n}"[: _length(column_type)]


def _length(column_type: str) -> int:
    """The length a character(n)/varchar(n) column takes; plenty for others."""
    inside = column_type.partition("(")[2].rstrip(")")
    return int(inside) if inside.isdigit() else 64


def _bypassing_views(conn: psycopg.Connection, target: DatabaseTarget, tables: list[str]) -> list[str]:
    """Views without security_invoker, and materialized views, that read a tenant table: they bypass policies."""
    return [
        f"{kind} {name}"
        for name, kind in conn.execute(
            """
            SELECT DISTINCT v.relname, CASE v.relkind WHEN 'm' THEN 'materialized view' ELSE 'view' END
            FROM pg_rewrite r
            JOIN pg_class v ON v.oid = r.ev_class
            JOIN pg_depend d ON d.objid = r.oid AND d.classid = 'pg_rewrite'::regclass
            JOIN pg_class t ON t.oid = d.refobjid
            JOIN pg_namespace n ON n.oid = t.relnamespace
            WHERE n.nspname = %s AND t.relname = ANY(%s) AND v.oid <> t.oid
              AND (v.relkind = 'm' OR (v.relkind = 'v' AND NOT coalesce(
                   'security_invoker=true' = ANY(v.reloptions) OR 'security_invoker=on' = ANY(v.reloptions), false)))
            ORDER BY 1
            """,
            [target.schema_name, tables],
        )
    ]


def coverage(target: DatabaseTarget) -> Coverage:
    """The RLS state of the target's tenant tables, changing nothing."""
    with connect(target) as conn:
        found = inspect_coverage(conn, target)
        conn.rollback()
    return found
