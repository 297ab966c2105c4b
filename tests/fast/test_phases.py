"""The two phases of a plan around the app deploy, from what the probe computed and what the authors marked; what
remains of a plan after its first phase; and the proof beside the computation, neither hidden."""

from dbpromote.models.plan import AFTER_DEPLOY, BEFORE_DEPLOY, BreakingChange, PlannedMigration, assign_phases
from dbpromote.models.report import CompatibilityProof, ProofFailure
from dbpromote.reporting.markdown import proof_lines
from tests.fast.test_promotion_logic import plan


def migration(app: str, name: str, parents: list[str], breaks: str = "", marker: str = "") -> PlannedMigration:
    breaking = [
        BreakingChange(kind="column-gone", table=f"{app}_a", model=f"{app}.A", field="f", breaks=breaks, what="x")
    ]
    return PlannedMigration(
        app=app,
        name=name,
        atomic=True,
        reversible=True,
        operations=[],
        sql=[f"-- {app}.{name}"],
        parents=parents,
        marker=marker,
        breaking=breaking if breaks else [],
    )


def test_a_break_a_marker_or_a_dependency_on_either_puts_a_migration_after_the_deploy():
    migrations = [
        migration("shop", "0002", ["shop.0001"]),
        migration("shop", "0003", ["shop.0002"], breaks="reads and writes"),
        migration("blog", "0005", ["blog.0004"]),  # another app, independent: before
        migration("shop", "0004", ["shop.0003"]),  # depends on a breaking one
        migration("blog", "0006", ["blog.0005"], marker="after_deploy"),
        migration("blog", "0007", ["blog.0006", "shop.0002"]),
        migration("crm", "0002", ["crm.0001"], marker="before_deploy"),
    ]
    assign_phases(migrations)
    assert {m.label: (m.phase, m.phase_reason) for m in migrations} == {
        "shop.0002": (BEFORE_DEPLOY, ""),
        "shop.0003": (AFTER_DEPLOY, "breaks the running release"),
        "blog.0005": (BEFORE_DEPLOY, ""),
        "shop.0004": (AFTER_DEPLOY, "depends on shop.0003"),
        "blog.0006": (AFTER_DEPLOY, "marked after_deploy"),
        "blog.0007": (AFTER_DEPLOY, "depends on blog.0006"),
        "crm.0002": (BEFORE_DEPLOY, ""),
    }
    whole = plan("production", *migrations)
    assert whole.two_phases and [m.label for m in whole.phase(BEFORE_DEPLOY)] == ["shop.0002", "blog.0005", "crm.0002"]


def test_a_warning_alone_keeps_a_migration_before_the_deploy_and_a_marker_does_not_hide_a_break():
    warned = migration("shop", "0002", ["shop.0001"])
    warned.breaking = [
        BreakingChange(
            kind="new-unique", table="t", model="m", field="f", breaks="writes", what="x", severity="warning"
        )
    ]
    marked = migration("shop", "0003", ["shop.0002"], breaks="writes", marker="before_deploy")
    assign_phases([warned, marked])
    assert (warned.phase, marked.phase) == (BEFORE_DEPLOY, AFTER_DEPLOY)


def test_what_remains_after_the_first_phase_and_after_a_crash_in_the_second_is_the_rest_of_the_plan():
    migrations = [
        migration("shop", "0002", ["shop.0001"], breaks="writes"),
        migration("blog", "0005", ["blog.0004"]),
        migration("shop", "0003", ["shop.0002"]),
        migration("crm", "0002", ["crm.0001"]),
    ]
    assign_phases(migrations)
    whole = plan("production", *migrations)
    shop2, blog5, shop3, crm2 = migrations
    first = whole.only({m.label for m in whole.phase(BEFORE_DEPLOY)})
    assert first.labels == ["blog.0005", "crm.0002"] and first.deferred == ["shop.0002", "shop.0003"]
    assert plan("production", shop2, shop3).is_rest_of(whole)  # the first phase done
    assert plan("production", shop2, shop3, crm2).is_rest_of(whole)  # part of it
    assert plan("production", shop3).is_rest_of(whole)  # and the second phase part-way
    assert not plan("production", shop2, blog5, crm2).is_rest_of(whole)  # shop.0003 alone: no phase explains it
    assert plan("production", blog5, shop3, crm2).is_rest_of(whole)  # one phase (stopped), crashed after one
    assert not plan("production", blog5, crm2).is_rest_of(whole)  # the after-deploy ones ran before the others


def test_sql_unknown_when_planned_runs_as_whatever_the_earlier_migrations_let_it_be():
    from dbpromote.probe.protocol import UNKNOWN_SQL

    unknown = migration("shop", "0003", ["shop.0002"])
    unknown.sql = [f"{UNKNOWN_SQL}: ValueError"]
    known = unknown.model_copy(update={"sql": ['ALTER TABLE "shop_a" DROP CONSTRAINT "c"']})
    other = known.model_copy(update={"sql": ['ALTER TABLE "shop_a" DROP COLUMN "x"']})
    assert plan("production", known).runs_as([unknown])  # planned before 0002 ran: now known
    assert not plan("production", other).runs_as([known])  # known then, changed since
    assert not plan("production", unknown).runs_as([known.model_copy(update={"atomic": False})])
    assert plan("production", known).is_rest_of(plan("production", migration("shop", "0002", []), unknown))


def test_the_proof_beside_the_computation_reports_what_agrees_and_what_does_not():
    migrations = [migration("shop", "0002", ["shop.0001"], breaks="reads and writes")]
    proof = CompatibilityProof(
        models=3,
        duration_s=0.1,
        failures=[
            ProofFailure(table="shop_a", model="shop.A", action="reads", sqlstate="42703", error="no column f"),
            ProofFailure(table="shop_b", model="shop.B", action="writes", sqlstate="23502", error="null in g"),
        ],
    )
    assert proof.findings(plan("staging", *migrations)) == [
        "proven: shop.0002: shop.A reads fail: no column f",
        "computed, not reproduced by the proof: shop.0002: shop.A writes",
        "the proof fails where nothing was computed: shop.B writes: null in g",
    ]
    clean = CompatibilityProof(models=3, duration_s=0.1, failures=[])
    assert proof_lines(clean, plan("staging"), "staging")[0].endswith("every SELECT and INSERT works.")
