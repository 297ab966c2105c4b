"""Lint and `dbpromote check` (issue 14) on real servers: the sample release's risky migrations are named by rule,
a project's ignore list is honoured with its reason, and `check` runs as a CI job would, with only a database URL
(no Prefect server): exit 1 on a blocking finding, 0 on a clean plan."""

import json

import psycopg

from tests.harness import RELEASE, ci_check, cli


def rules(risks: list[str]) -> list[str]:
    """The rule names of risks written `what: why [rule: fix]`."""
    return [risk.rsplit("[", 1)[1].split(":")[0] for risk in risks]


def test_lint_names_the_sample_release_risks_by_rule(fresh_databases):
    from dbpromote.config import load_project, load_target
    from dbpromote.planning import compute_plan

    plan = compute_plan(load_project("tenant-backend"), load_target("staging"))
    found = {m.label: rules(m.risks) for m in plan.migrations}
    assert found["core.0003_task_priority"] == ["ban-drop-default"]  # squawk: old code's INSERTs fail without it
    assert found["core.0006_rename_milestone_due"] == ["rename-column"]
    assert found["core.0007_remove_invoice_legacy_reference"] == ["drop-column-still-read"]
    assert found["core.0008_default_task_statuses"] == ["runpython"]
    assert found["core.0002_featureflag"] == []  # a new table: its index and constraint block nobody


def test_a_rule_the_project_ignores_is_a_note_not_a_risk(fresh_databases, project_copy):
    from dbpromote.config import load_project, load_target
    from dbpromote.planning import compute_plan

    refused = cli("project", "add", "lenient", "--path", str(project_copy.folder), "--settings",
                  "tenant_backend.settings", "--lint-ignore", "runpython")  # fmt: skip
    assert refused.returncode == 1
    assert (
        refused.stderr.strip()
        == "error: --lint-ignore runpython has no reason; write it as --lint-ignore runpython=WHY."
    )
    name = project_copy("lenient", lint_ignore={"runpython": "data migrations are reviewed with the code"})
    plan = compute_plan(load_project(name), load_target("staging"))
    assert "runpython" not in rules(plan.risks)
    assert "lint rule runpython is ignored for this project: data migrations are reviewed with the code" in plan.notes


def test_check_in_ci_fails_on_blocking_findings_and_passes_a_clean_plan(fresh_databases):
    from dbpromote.flows.environment import migrate_environment

    stack = fresh_databases
    risky = ci_check(stack, "staging", "--json")
    assert risky.returncode == 1, risky.stderr
    report = json.loads(risky.stdout)
    assert [m["app"] + "." + m["name"] for m in report["plan"]["migrations"]] == RELEASE
    assert any("[drop-column-still-read:" in finding for finding in report["blocking"])
    assert not any(finding.startswith("drift:") for finding in report["blocking"])  # RLS gaps a promotion repairs

    allowed = ci_check(stack, "staging", "--allow-risks")
    assert allowed.returncode == 0, allowed.stdout + allowed.stderr
    assert "nothing blocking" in allowed.stdout.splitlines()[0] and "**Risks (allowed" in allowed.stdout

    migrate_environment("tenant-backend", "staging")  # the release applied: nothing left to plan
    clean = ci_check(stack, "staging")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "### Plan" in clean.stdout and ": 0 migration(s)" in clean.stdout and "no drift on staging" in clean.stdout

    with psycopg.connect(stack.database_url("staging")) as conn:
        conn.execute("ALTER TABLE core_task ADD COLUMN notes text")
    drifted = ci_check(stack, "staging")
    assert drifted.returncode == 1
    assert "| column public.core_task.notes | unexpected |" in drifted.stdout
    assert "Traceback" not in drifted.stderr
