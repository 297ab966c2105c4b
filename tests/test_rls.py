"""Row-Level Security: policies kept current for every tenant table, and isolation proven as the application."""

import psycopg
import pytest

from dbpromote import rls
from dbpromote.errors import ConfigError, VerificationError


@pytest.fixture(scope="module")
def promoted_staging(stack):
    """Staging after the environment step (which ends with the RLS apply and proof)."""
    from dbpromote.flows.environment import migrate_environment

    from dbpromote.localstack import reset_database

    reset_database(stack, "staging")
    report = migrate_environment("tenant-backend", "staging")
    return stack, report


@pytest.fixture
def superuser(promoted_staging):
    stack, _ = promoted_staging
    with psycopg.connect(**stack.superuser_conninfo("staging", "tenant_backend"), autocommit=True) as conn:
        yield conn


def staging():
    from dbpromote.config import load_target

    return load_target("staging")


def test_the_release_new_table_gets_its_policy_in_the_same_promotion(promoted_staging):
    _, report = promoted_staging
    by_table = {t.table: t for t in report.rls.tables}
    assert len(by_table) >= 27
    assert by_table["core_featureflag"].action.startswith("enabled, created")
    assert all(t.policy == "current" and t.rls_enabled and not t.missing_grants for t in report.rls.tables)
    assert report.isolation.passed and {p.table for p in report.isolation.tables} == set(by_table)


def test_cross_tenant_read_insert_update_refused_on_every_tenant_table(promoted_staging):

    proof = rls.prove_isolation(staging())
    assert len(proof.tables) >= 27
    for table in proof.tables:
        assert table.passed, (table.table, table.detail)
        assert "cross-tenant insert and update refused" in table.detail


def test_second_run_issues_zero_ddl(promoted_staging, superuser):

    superuser.execute("CREATE TABLE IF NOT EXISTS ddl_seen (tag text)")
    superuser.execute("GRANT INSERT ON ddl_seen TO PUBLIC")
    superuser.execute("""
        CREATE OR REPLACE FUNCTION count_ddl() RETURNS event_trigger LANGUAGE plpgsql AS $$
        BEGIN INSERT INTO ddl_seen SELECT command_tag FROM pg_event_trigger_ddl_commands(); END $$""")
    superuser.execute("DROP EVENT TRIGGER IF EXISTS count_ddl")
    superuser.execute("CREATE EVENT TRIGGER count_ddl ON ddl_command_end EXECUTE FUNCTION count_ddl()")
    try:
        coverage = rls.bring_rls_up_to_date(staging())
        seen = superuser.execute("SELECT tag FROM ddl_seen").fetchall()
    finally:
        superuser.execute("DROP EVENT TRIGGER count_ddl")
        superuser.execute("DROP TABLE ddl_seen")
    assert coverage.ddl_statements == 0
    assert seen == []
    assert not coverage.gaps and not coverage.drift


def test_hand_edited_policy_is_drift_proof_fails_then_apply_replaces_it(promoted_staging, superuser):

    from dbpromote.postgres import connect

    superuser.execute("DROP POLICY tenant_isolation_core_task ON core_task")
    superuser.execute("CREATE POLICY tenant_isolation_core_task ON core_task TO django_app USING (true)")
    with connect(staging()) as conn:
        assert rls.inspect_coverage(conn, staging()).drift == ["core_task"]
    with pytest.raises(VerificationError, match=r"Tenant isolation does not hold on staging: core_task \("):
        rls.prove_isolation(staging())

    coverage = rls.bring_rls_up_to_date(staging())
    assert {t.table: t.action for t in coverage.tables}["core_task"] == "replaced (drift)"
    assert rls.prove_isolation(staging()).passed


def test_revoked_grants_are_found_per_table_and_privilege_and_given_back(promoted_staging, superuser):
    from dbpromote.postgres import connect

    superuser.execute("REVOKE UPDATE, DELETE ON core_task FROM django_app")
    superuser.execute("REVOKE INSERT ON core_project FROM django_app")
    superuser.execute("REVOKE USAGE, SELECT ON SEQUENCE core_task_id_seq FROM django_app")
    with connect(staging()) as conn:
        found = {t.table: t.missing_grants for t in rls.inspect_coverage(conn, staging()).tables if t.missing_grants}
    assert found == {"core_project": ["INSERT"], "core_task": ["UPDATE", "DELETE"]}

    coverage = rls.bring_rls_up_to_date(staging())
    actions = {t.table: t.action for t in coverage.tables if t.action}
    assert actions == {"core_project": "granted", "core_task": "granted"}
    assert coverage.ddl_statements == 3  # the two tables' grants and the sequence's
    assert not any(t.missing_grants for t in coverage.tables)
    (usable,) = superuser.execute("SELECT has_sequence_privilege('django_app', 'core_task_id_seq', 'USAGE')").fetchone()
    assert usable and rls.prove_isolation(staging()).passed


@pytest.mark.parametrize(
    "grant, revoke, named",
    [
        ("ALTER ROLE django_app BYPASSRLS", "ALTER ROLE django_app NOBYPASSRLS", "ALTER ROLE django_app NOBYPASSRLS"),
        ("ALTER ROLE django_app SUPERUSER", "ALTER ROLE django_app NOSUPERUSER", "ALTER ROLE django_app NOSUPERUSER"),
        (
            "ALTER TABLE core_label OWNER TO django_app",
            "ALTER TABLE core_label OWNER TO tenant_owner",
            "django_app owns core_label",
        ),
    ],
)
def test_app_role_that_bypasses_policies_is_refused_with_the_fix(promoted_staging, superuser, grant, revoke, named):

    superuser.execute(grant)
    try:
        with pytest.raises(ConfigError) as error:
            rls.bring_rls_up_to_date(staging())
    finally:
        superuser.execute(revoke)
    assert "Tenant isolation cannot hold on staging" in str(error.value) and named in str(error.value)


def test_view_without_security_invoker_is_reported(promoted_staging, superuser):

    superuser.execute("CREATE VIEW open_tasks AS SELECT id, tenant_id, title FROM core_task")
    superuser.execute("CREATE VIEW safe_tasks WITH (security_invoker = true) AS SELECT id, tenant_id FROM core_task")
    try:
        with pytest.raises(VerificationError, match="view open_tasks bypasses the policies"):
            rls.prove_isolation(staging())
    finally:
        superuser.execute("DROP VIEW open_tasks, safe_tasks")


def test_force_rls_refused_when_migrations_would_see_nothing(promoted_staging, make_target):

    from dbpromote.config import load_target

    name = make_target("staging-forced", force_rls=True)
    with pytest.raises(ConfigError, match="data migrations \\(RunPython\\) would see no rows"):
        rls.bring_rls_up_to_date(load_target(name))


def test_audit_rls_reports_a_missing_policy_and_changes_nothing(promoted_staging, superuser):
    from dbpromote.flows.audit import audit_rls

    rls.bring_rls_up_to_date(staging())  # whatever earlier tests left, start covered
    assert audit_rls(["staging"])[0].gaps == []
    superuser.execute("DROP POLICY tenant_isolation_core_label ON core_label")
    try:
        with pytest.raises(VerificationError, match="staging: core_label not covered"):
            audit_rls(["staging"])
        assert superuser.execute("SELECT count(*) FROM pg_policies WHERE tablename = 'core_label'").fetchone()[0] == 0
    finally:
        rls.bring_rls_up_to_date(staging())


@pytest.mark.parametrize("tenants", [0, 1], ids=["no tenants yet", "one tenant"])
def test_a_database_with_fewer_than_two_tenants_is_proven_on_rows_of_its_own_making_and_nothing_is_left(stack, tenants):
    """A new shard or region starts with no tenants: its promotion's RLS step proves isolation on synthetic rows
    of two tenants (synthetic tenants too), made and rolled back inside the proof."""
    from dbpromote.flows.environment import migrate_environment

    from dbpromote.localstack import reset_database
    from dbpromote.postgres import connect, row_counts

    reset_database(stack, "staging", tenants=tenants)
    report = migrate_environment("tenant-backend", "staging")

    assert report.isolation.passed, report.isolation
    proofs = {proof.table: proof for proof in report.isolation.tables}
    assert proofs["core_task"].proven_by == "synthetic rows"  # a tenant's table with a tenant's foreign keys
    assert {proof.proven_by for proof in proofs.values()} <= {"synthetic rows", "policy"}
    with connect(staging()) as conn:
        before = row_counts(conn)
    assert rls.prove_isolation(staging()).passed
    with connect(staging()) as conn:
        assert row_counts(conn) == before  # nothing the proof wrote is left behind
