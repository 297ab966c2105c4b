"""dbpromote as users run it in Prefect: REST triggers, schedules, audits and notifications, on the stack's worker."""

import json
import threading
import time
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import psycopg
import pytest

from dbpromote.errors import VerificationError
from tests.harness import RELEASE, applied


def rest(stack) -> httpx.Client:
    """Plain HTTP against the locked API, as a CI job would call it: basic auth with the stack's credential."""
    user, password = stack.api_auth_string.split(":", 1)
    return httpx.Client(base_url=stack.prefect_api_url, auth=(user, password))


def wait_for_state(api: httpx.Client, run_id: str, states: set[str], timeout: float = 240) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = api.get(f"/flow_runs/{run_id}").json()
        if run["state"]["type"] in states:
            return run
        time.sleep(1)
    raise AssertionError(f"run {run_id} never reached {states}; last {run['state']}")


def test_rest_trigger_with_idempotency_key_then_approval_over_rest(fresh_databases):
    api = rest(fresh_databases)
    deployment = api.get("/deployments/name/promote/promote").json()["id"]
    body = {
        "parameters": {"project": "tenant-backend", "through": ["staging", "production"]},
        "idempotency_key": f"ci-release-{time.time_ns()}",
    }
    first = api.post(f"/deployments/{deployment}/create_flow_run", json=body).json()
    again = api.post(f"/deployments/{deployment}/create_flow_run", json=body).json()
    assert first["id"] == again["id"]

    paused = wait_for_state(api, first["id"], {"PAUSED"})
    assert paused["state"]["name"] == "Suspended"  # waiting for a person holds no worker
    schema = paused["state"]["state_details"]["run_input_keyset"]["schema"]  # where a REST client finds the form
    deadline = time.monotonic() + 15  # the flow stores its form just after pausing
    while api.get(f"/flow_runs/{first['id']}/input/{schema}").status_code != 200:
        assert time.monotonic() < deadline, "the paused run never stored its approval form"
        time.sleep(0.5)
    assert applied(fresh_databases, "production") == ["core.0001_initial"]
    refused = api.post(
        f"/flow_runs/{first['id']}/resume", json={"run_input": {"decision": "approve", "approver": "ci"}}
    ).json()
    assert refused["status"] == "REJECT" and "acknowledge_risky_operations" in refused["details"]["reason"]
    accepted = api.post(
        f"/flow_runs/{first['id']}/resume",
        json={
            "run_input": {
                "decision": "approve",
                "approver": "ci",
                "comment": "pipeline 7",
                "acknowledge_risky_operations": True,
            }
        },
    ).json()
    assert accepted["status"] == "ACCEPT"
    assert wait_for_state(api, first["id"], {"COMPLETED", "FAILED", "CRASHED"})["state"]["type"] == "COMPLETED"
    assert applied(fresh_databases, "production") == ["core.0001_initial", *RELEASE]


def test_scheduled_nightly_backup_produces_a_verified_backup(stack):
    from prefect import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterDeploymentId,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.schedules import IntervalSchedule

    from dbpromote.backups import list_backups
    from dbpromote.config import load_target

    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("backup/nightly-backup")
        schedule = client.create_deployment_schedules(
            deployment.id, [(IntervalSchedule(interval=timedelta(seconds=20)), True)]
        )[0]
        try:
            deadline = time.monotonic() + 240
            done = []
            while not done and time.monotonic() < deadline:
                done = client.read_flow_runs(
                    flow_run_filter=FlowRunFilter(
                        deployment_id=FlowRunFilterDeploymentId(any_=[deployment.id]),
                        state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.COMPLETED])),
                    )
                )
                time.sleep(2)
        finally:
            client.delete_deployment_schedule(deployment.id, schedule.id)
    assert done, "the schedule produced no completed backup run"
    run_id = str(done[0].id)
    for target in ("staging", "production"):
        assert any(b.flow_run_id == run_id for b in list_backups(load_target(target)))


def test_audit_flags_an_old_backup_and_a_missing_policy(fresh_databases):
    from dbpromote.flows.audit import audit
    from dbpromote.flows.backup import backup

    backup(["production"])
    with pytest.raises(VerificationError, match=r"production's newest backup is [\d.]+ h old \(allowed 1e-06 h\)"):
        audit("tenant-backend", ["production"], max_backup_age_h=0.000001)
    with psycopg.connect(fresh_databases.database_url("production")) as conn:
        conn.execute("ALTER TABLE core_label ENABLE ROW LEVEL SECURITY")  # RLS on, but no policy
    with pytest.raises(VerificationError, match="production: RLS missing or out of date on .*core_label"):
        audit("tenant-backend", ["production"])


class Receiver:
    """A local webhook endpoint that records what it is sent."""

    def __init__(self):
        self.messages: list[dict] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                receiver.messages.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(200)
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def wait_for(self, fragment: str, timeout: float = 120) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for message in self.messages:
                if fragment in message["text"]:
                    return message
            time.sleep(0.5)
        raise AssertionError(f"no notification containing {fragment!r}: {self.messages}")


def test_notifications_when_waiting_for_approval_and_when_a_run_fails(fresh_databases):
    from prefect import get_client
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    from dbpromote.notify import NOTIFICATION_BLOCK
    from dbpromote.runs import answer_approval
    from tests.harness import PromotionInBackground

    receiver = Receiver()
    CustomWebhookNotificationBlock(
        name="dbpromote", url=receiver.url, allow_private_urls=True, json_data={"text": "{{subject}} | {{body}}"}
    ).save(NOTIFICATION_BLOCK, overwrite=True)
    try:
        promotion = PromotionInBackground()
        run = promotion.paused_run()
        waiting = receiver.wait_for(f"/runs/flow-run/{run.id}")
        assert "waits for approval on production" in waiting["text"]
        answer_approval(str(run.id), "reject", "dana", "bad timing", acknowledge_risks=False)
        promotion.finish()
        failed = receiver.wait_for("dana rejected promoting to production")
        assert "failed:" in failed["text"] and f"/runs/flow-run/{run.id}" in failed["text"]
    finally:
        with get_client(sync_client=True) as client:
            client.delete_block_document(CustomWebhookNotificationBlock.load(NOTIFICATION_BLOCK)._block_document_id)
        receiver.server.shutdown()
