"""The promotion: staging first, approval, then production (promises 1 and 2)."""

import json
import threading
import time

import psycopg
import pytest

from dbpromote.errors import ApprovalRejected, PreflightError
from tests.test_environment_step import RELEASE, applied


class PromotionInBackground:
    """Runs the promote flow in a thread of this process, as a worker would, so the test can act as the approver."""

    def __init__(self, **parameters):
        from deployments.runs import pending_approvals
        from flows.promote import promote

        self.already_paused = {run.id for run in pending_approvals()}
        self.result, self.error = None, None
        parameters = {
            "project": "tenant-backend",
            "through": ["staging", "production"],
            "approval_poll_s": 1,
        } | parameters

        def run():
            try:
                self.result = promote(**parameters)
            except BaseException as error:  # handed to the test
                self.error = error

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def paused_run(self, timeout=120):
        from deployments.runs import pending_approvals

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.thread.is_alive(), f"the flow ended without pausing: {self.error}"
            runs = [run for run in pending_approvals() if run.id not in self.already_paused]
            if runs:
                return runs[-1]
            time.sleep(0.5)
        raise AssertionError("no promotion paused for approval")

    def finish(self, timeout=180):
        self.thread.join(timeout)
        assert not self.thread.is_alive()
        return self.result


def test_promise_1_production_migrated_only_after_staging_backup_and_named_approval(fresh_databases):
    from dbpromote.config import load_target
    from deployments.runs import answer_approval
    from tasks.backup import list_backups
    from tasks.gcs import gcs_client

    promotion = PromotionInBackground()
    run = promotion.paused_run()
    assert applied(fresh_databases, "staging") == ["core.0001_initial", *RELEASE]
    assert applied(fresh_databases, "production") == ["core.0001_initial"]

    answer_approval(str(run.id), "approve", "alice", "release 42", acknowledge_risks=True)
    reports = promotion.finish()
    assert promotion.error is None, promotion.error
    assert [r.target for r in reports] == ["staging", "production"]
    assert applied(fresh_databases, "production") == ["core.0001_initial", *RELEASE]
    assert reports[0].plan.hash == reports[1].plan.hash
    production_backup = list_backups(load_target("production"), "production")[0]
    assert production_backup.uri == reports[1].backup.uri
    audit = [
        b
        for b in gcs_client().list_blobs("dbpromote-backups", prefix="backups/production/approvals/")
        if str(run.id)[:8] in b.name
    ]
    record = json.loads(audit[0].download_as_bytes())
    assert record["approver"] == "alice" and record["plan_hash"] == reports[1].plan.hash
    assert record["comment"] == "release 42" and record["migrations"] == RELEASE


def test_promise_2_rejection_leaves_production_untouched(fresh_databases):
    from deployments.runs import answer_approval

    promotion = PromotionInBackground()
    run = promotion.paused_run()
    answer_approval(str(run.id), "reject", "bob", "not today", acknowledge_risks=False)
    promotion.finish()
    assert isinstance(promotion.error, ApprovalRejected)
    assert "bob rejected promoting to production (not today); production is untouched" in str(promotion.error)
    assert applied(fresh_databases, "production") == ["core.0001_initial"]


def test_promise_2_timeout_counts_as_rejection(fresh_databases):
    promotion = PromotionInBackground(approval_timeout_s=3)
    promotion.finish()
    assert isinstance(promotion.error, ApprovalRejected)
    assert "counts as a rejection; production is untouched" in str(promotion.error)
    assert applied(fresh_databases, "production") == ["core.0001_initial"]


def test_approval_from_someone_not_listed_is_refused_and_the_run_keeps_waiting(fresh_databases, make_target):
    from deployments.runs import answer_approval, pending_approvals

    make_target("production-guarded", server="production", requires_approval=True, approvers=["carol"])
    promotion = PromotionInBackground(through=["staging", "production-guarded"])
    run = promotion.paused_run()
    answer_approval(str(run.id), "approve", "mallory", "let me in", acknowledge_risks=True)
    time.sleep(3)
    assert promotion.thread.is_alive()
    assert applied(fresh_databases, "production") == ["core.0001_initial"]
    promotion.already_paused.discard(run.id)
    waiting = promotion.paused_run()
    assert waiting.id == run.id
    answer_approval(str(run.id), "approve", "carol", "ok", acknowledge_risks=True)
    promotion.finish()
    assert promotion.error is None, promotion.error
    assert applied(fresh_databases, "production")[-1] == RELEASE[-1]
    assert not [r for r in pending_approvals() if r.id == run.id]


def test_promise_1_plan_changed_after_approval_runs_nothing(fresh_databases):
    from deployments.runs import answer_approval

    promotion = PromotionInBackground()
    run = promotion.paused_run()
    with psycopg.connect(fresh_databases.database_url("production")) as conn:
        # Someone applies part of the release by hand while the approval waits: the plan no longer matches.
        conn.execute("INSERT INTO django_migrations (app, name, applied) VALUES ('core', '0002_featureflag', now())")
    answer_approval(str(run.id), "approve", "alice", "ok", acknowledge_risks=True)
    promotion.finish()
    assert isinstance(promotion.error, PreflightError)
    assert "not the approved/staged" in str(promotion.error) and "nothing was run" in str(promotion.error)
    assert applied(fresh_databases, "production") == ["core.0001_initial", "core.0002_featureflag"]


def test_production_that_staging_cannot_vouch_for_is_refused_before_anything(fresh_databases):
    from flows.promote import promote

    with psycopg.connect(fresh_databases.database_url("staging")) as conn:
        conn.execute("INSERT INTO django_migrations (app, name, applied) VALUES ('core', '0002_featureflag', now())")
        conn.execute("CREATE TABLE core_featureflag (id bigint)")
    with pytest.raises(PreflightError, match="only on production: core.0002_featureflag"):
        promote("tenant-backend", ["staging", "production"])
    assert applied(fresh_databases, "production") == ["core.0001_initial"]
    assert applied(fresh_databases, "staging") == ["core.0001_initial", "core.0002_featureflag"]
