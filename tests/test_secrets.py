"""Promise 5: no password appears in a log line, an artifact, an exception message or a flow parameter."""

import pytest

from dbpromote.errors import DbpromoteError


def test_promise_5_no_secret_in_logs_artifacts_exceptions_or_parameters(fresh_databases, make_target):
    from dbpromote.flows.environment import migrate_environment
    from prefect import get_client

    stack = fresh_databases
    secrets = [stack.passwords[role] for role in ("tenant_owner", "django_app", "postgres")]
    failures = []
    migrate_environment("tenant-backend", "staging")  # a happy run: backup, migrations, verify, report
    with_bad_password = stack.database_url("production").replace(stack.passwords["tenant_owner"], "Wr0ng-S3cret")
    for name, url in [
        ("prod-bad-password", with_bad_password),
        ("prod-bad-host", stack.database_url("production").replace("127.0.0.1", "127.0.0.2")),
    ]:
        target = make_target(name, server="production", url=url)
        with pytest.raises(DbpromoteError) as error:
            migrate_environment("tenant-backend", target)
        failures.append(str(error.value))
    secrets.append("Wr0ng-S3cret")

    with get_client(sync_client=True) as client:
        logs = [log.message for log in client.read_logs(limit=200)]
        offset = 200
        while batch := client.read_logs(limit=200, offset=offset):
            logs += [log.message for log in batch]
            offset += 200
        artifacts = [str(a.data) + str(a.description) for a in client.read_artifacts(limit=200)]
        runs = client.read_flow_runs(limit=200)
        parameters = [str(run.parameters) for run in runs]
        states = [str(run.state.message) for run in runs if run.state]
    assert len(logs) > 20 and artifacts and parameters
    haystack = "\n".join(logs + artifacts + parameters + states + failures)
    for secret in secrets:
        assert secret not in haystack


def test_promise_5_a_secret_the_settings_read_is_masked_even_when_they_print_it(fresh_databases, project_copy):
    """A settings module that fails with its secret in the message (as careless ones do): the value comes from a
    Prefect Secret block into the project's process only, and what comes back is masked."""
    from dbpromote.flows.environment import migrate_environment
    from prefect.blocks.system import Secret

    Secret(value="sk-live-0123456789").save("shop-stripe-key", overwrite=True)
    project_copy.add_settings('raise RuntimeError("cannot reach Stripe with " + os.environ["STRIPE_KEY"])')
    project = project_copy("settings-printing-a-secret", env_secrets={"STRIPE_KEY": "shop-stripe-key"})

    with pytest.raises(DbpromoteError) as error:
        migrate_environment(project, "staging")

    assert "cannot reach Stripe with ****" in str(error.value)
    assert "sk-live-0123456789" not in str(error.value)
