"""The Prefect server a command talks to is the one its user chose: PREFECT_API_URL from the environment or from
the active Prefect profile (a real profiles.toml) wins over the local stack, and the output names it."""

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from dbpromote import localstack as local_stack


@pytest.fixture(scope="module")
def team_server(stack, tmp_path_factory):
    """A second Prefect server (the team's), with nothing of dbpromote's registered on it."""
    home = tmp_path_factory.mktemp("team-prefect")
    port = local_stack.free_port(stack.ports["prefect"] + 50)  # in this test worker's own range (conftest)
    env = {key: value for key, value in os.environ.items() if not key.startswith("PREFECT_")}
    env |= {"PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}
    prefect = str(Path(sys.executable).parent / "prefect")
    server = subprocess.Popen(
        [prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.5)
    yield url
    server.terminate()
    server.wait(timeout=30)


def profile_env(tmp_path: Path, api_url: str) -> dict[str, str]:
    """The environment of a user whose active Prefect profile points at `api_url` (`prefect profile use team`),
    with this session's local stack on the machine too and no PREFECT_API_URL of their own."""
    (tmp_path / "profiles.toml").write_text(f'active = "team"\n\n[profiles.team]\nPREFECT_API_URL = "{api_url}"\n')
    env = {key: value for key, value in os.environ.items() if not key.startswith("PREFECT_")}
    return env | {"PREFECT_HOME": str(tmp_path)}


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    command = [str(Path(sys.executable).parent / "dbpromote"), *args]
    return subprocess.run(command, capture_output=True, text=True, env=env)


def test_the_active_profile_s_server_wins_over_the_local_stack_and_is_named(stack, team_server, tmp_path):
    env = profile_env(tmp_path, team_server)
    named = f"Prefect server: {team_server} (from the Prefect profile 'team')"

    # The stack's own targets exist on the local stack's server, not on the team's: these reached the team's, and
    # their one line of error says which server that was.
    backup = run(env, "backup", "staging")
    (line,) = backup.stderr.splitlines()
    assert backup.returncode == 1 and "Unknown target 'staging'" in line and line.endswith(f"({named})"), line
    promote = run(env, "promote", "--project", "tenant-backend", "--through", "staging,production")
    (line,) = promote.stderr.splitlines()
    assert "Unknown project 'tenant-backend'" in line and line.endswith(f"({named})"), line
    approve = run(env, "approve", "00000000-0000-0000-0000-000000000000", "--approver", "alice")
    (line,) = approve.stderr.splitlines()
    assert approve.returncode == 1 and line.endswith(f"({named})"), line
    pending = run(env, "pending")  # a command that succeeds names it after its output
    assert pending.returncode == 0 and pending.stderr.splitlines()[-1] == named, pending.stderr
    status = run(env, "stack", "status")
    assert status.stdout.splitlines()[-1] == f"commands use {team_server}", status.stdout


def test_without_a_chosen_server_the_local_stack_is_the_default_and_is_not_named(stack, tmp_path):
    env = {key: value for key, value in os.environ.items() if not key.startswith("PREFECT_")}
    env |= {"PREFECT_HOME": str(tmp_path)}  # a profile file with nothing in it: Prefect's default profile

    pending = run(env, "pending")
    assert pending.returncode == 0 and "Prefect server:" not in pending.stderr, pending.stderr
    status = run(env, "stack", "status")
    assert status.stdout.splitlines()[-1] == f"commands use the local stack's Prefect server ({stack.prefect_api_url})"
    explicit = run(env | {"PREFECT_API_URL": stack.prefect_api_url}, "pending")
    assert "Prefect server:" not in explicit.stderr  # the local stack chosen by name is still the local stack
