"""Approvers who prove who they are: enrolled people's one-time codes checked inside the flow, and the two-person
rule; a wrong, reused or missing code, a name not enrolled and the same person twice all leave the run waiting."""

import time

import pyotp
import pytest

from tests.harness import RELEASE, PromotionInBackground, applied, cli


@pytest.fixture
def enrolled():
    """Enrol people as they would (`dbpromote approver add`); their authenticator apps, from the URI shown once.
    They are unenrolled afterwards: other tests' approvers lists take names at their word."""
    from prefect import get_client

    names = []

    def enrol(name: str) -> pyotp.TOTP:
        result = cli("approver", "add", name, "--replace")
        assert result.returncode == 0, result.stderr
        (uri,) = [line for line in result.stdout.splitlines() if line.startswith("otpauth://")]
        assert "█" in result.stdout or "▀" in result.stdout or "▄" in result.stdout  # the QR code, in the terminal
        names.append(name)
        return pyotp.parse_uri(uri)

    yield enrol
    with get_client(sync_client=True) as client:
        for name in names:
            block = client.read_block_document_by_name(f"dbpromote-approver-{name}", block_type_slug="secret")
            client.delete_block_document(block.id)


def answered(run_id: str, approver: str, code: str, decision: str = "approve"):
    """Answer over the REST API as a CI job would (the route the CLI and the UI use, unchecked by either); the
    run's state once it paused again (the answer refused or one more needed)."""
    from prefect import get_client

    answer = {"decision": decision, "approver": approver, "comment": "", "code": code}
    with get_client(sync_client=True) as client:
        before = client.read_flow_run(run_id).state.id
        client.resume_flow_run(run_id, run_input=answer | {"acknowledge_risky_operations": True})
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            state = client.read_flow_run(run_id).state
            if state.id != before and (state.is_paused() or state.is_final()):
                return state
            time.sleep(0.3)
    raise AssertionError("the run neither paused again nor went on")


def refused(run_id, reason: str, timeout_s: float = 15) -> bool:
    """Whether the run logged that it refused an answer for this reason (logs reach the API in batches)."""
    from prefect import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    deadline = time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))
            if any(log.message.startswith("approval refused") and reason in log.message for log in logs):
                return True
            time.sleep(0.5)
    return False


def test_two_enrolled_approvers_with_current_codes_are_needed_and_nothing_else_counts(
    fresh_databases, make_target, enrolled
):
    from prefect import get_client

    from dbpromote.approvers import check_code
    from dbpromote.config import load_target
    from dbpromote.records import read_records
    from dbpromote.runs import answer_approval

    alice, bob = enrolled("alice"), enrolled("bob")
    target = make_target(
        "production-2p",
        server="production",
        requires_approval=True,
        approvers=["alice", "bob", "dave"],
        min_approvers=2,
    )
    promotion = PromotionInBackground(through=["staging", target])
    run = promotion.paused_run()

    # From the CLI, an answer that would not count is refused at the terminal: nothing is sent, the run waits.
    for approver, code, reason in [
        ("alice", "000000", "the code given for alice is not their current one"),
        ("mallory", alice.now(), "'mallory' may not approve production-2p (approvers: alice, bob, dave)"),
        ("dave", alice.now(), "'dave' is not an enrolled approver (`dbpromote approver add dave`)"),
    ]:
        typed = cli("approve", str(run.id), "--approver", approver, "--code", code, "--acknowledge-risks")
        assert typed.returncode == 1 and typed.stdout == "", typed.stdout
        expected = (
            f"error: Not approved: {reason}; nothing was sent and run {run.id} still waits: answer as a permitted "
            "approver, with their current code where approvers are enrolled.\n"
        )
        assert typed.stderr == expected, typed.stderr
    with get_client(sync_client=True) as client:
        assert client.read_flow_run(run.id).state.id == run.state.id  # still the same wait: nothing reached the run

    # Over REST nothing checks before the run, which judges each answer itself and keeps waiting.
    assert answered(run.id, "alice", "000000").is_paused()  # not her current code
    assert answered(run.id, "mallory", alice.now()).is_paused()  # not on the list
    assert answered(run.id, "dave", alice.now()).is_paused()  # on the list, never enrolled
    used = alice.now()
    assert answered(run.id, "alice", used).is_paused()  # approved: 1 of 2, still waiting
    assert "the code given for alice was already used" in check_code("alice", used)  # seen once, never replayed
    assert answered(run.id, "alice", alice.now()).is_paused()  # the same person twice is one approver
    twice = cli("approve", str(run.id), "--approver", "alice", "--code", alice.now(), "--acknowledge-risks")
    assert twice.returncode == 1 and "alice has already approved; another approver must approve too" in twice.stderr
    assert applied(fresh_databases, "production") == ["core.0001_initial"]
    assert refused(run.id, "the code given for alice is not their current one")
    assert refused(run.id, "'mallory' may not approve production-2p")
    assert refused(run.id, "'dave' is not an enrolled approver (`dbpromote approver add dave`)")
    assert refused(run.id, "alice has already approved; another approver must approve too")

    answer_approval(str(run.id), "approve", "bob", "", acknowledge_risks=True, code=bob.now())  # the second person
    promotion.finish()
    assert promotion.error is None, promotion.error
    assert applied(fresh_databases, "production") == ["core.0001_initial", *RELEASE]
    (record,) = [r for r in read_records(load_target(target), "approvals") if r["flow_run_id"] == str(run.id)]
    assert record["approvers"] == ["alice", "bob"] and record["proven"] is True
    assert alice.secret not in str(record) and bob.secret not in str(record)


def test_a_run_whose_approvers_are_enrolled_needs_a_code_from_the_cli(fresh_databases, make_target, enrolled):
    enrolled("carol")
    target = make_target("production-coded", server="production", requires_approval=True, approvers=["carol"])
    promotion = PromotionInBackground(through=["staging", target])
    run = promotion.paused_run()
    without = cli("approve", str(run.id), "--approver", "carol", "--acknowledge-risks")
    assert without.returncode == 1 and "give your current one-time code with --code" in without.stderr
    rejected = cli("reject", str(run.id), "--approver", "carol", "--comment", "no", "--code", "123")
    assert rejected.returncode == 1 and "Traceback" not in rejected.stderr  # the form wants 6 digits at least
    assert applied(fresh_databases, "production") == ["core.0001_initial"]


def test_two_person_rule_needs_enough_enrolled_approvers_when_the_target_is_added(stack):
    url = stack.database_url("production")
    refused = cli(
        "target", "add", "two-people", "--url", url, "--approvers", "zed,yan", "--min-approvers", "2", "--no-check"
    )
    assert refused.returncode == 1
    assert "--min-approvers 2 needs at least 2 enrolled people on --approvers (enrolled: none)" in refused.stderr


def test_an_enrolled_name_must_be_simple(stack):
    refused = cli("approver", "add", "Alice Smith")
    assert refused.returncode == 1 and "Approver name 'Alice Smith' is not allowed" in refused.stderr
