"""One real local stack (PostgreSQL x2, GCS emulator, Prefect server and worker) per pytest process: the whole
session's, or each xdist worker's own (`make test` runs the modules on several workers, a module on one worker)."""

import os
import shutil
import sys
import tempfile
from pathlib import Path

# Prefect reads its settings once, at import: point it at the session's stack before anything imports it.
HOME = Path(tempfile.mkdtemp(prefix="dbpromote-test-"))
HOME.chmod(0o711)  # the postgres system user must reach the clusters inside; nobody else reads anything
os.environ["DBPROMOTE_HOME"] = str(HOME)

from dbpromote import localstack as local_stack  # noqa: E402

# Each xdist worker (gw0, gw1, ...) looks for its ports in a range of its own: workers start at the same moment, and
# two of them probing the same range would both find the same port free.
WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))
PREFECT_PORT = local_stack.free_port(4300 + 100 * WORKER)
GCS_PORT = local_stack.free_port(9100 + 100 * WORKER)
os.environ["DBPROMOTE_PORT_PREFECT"] = str(PREFECT_PORT)
os.environ["DBPROMOTE_PORT_GCS"] = str(GCS_PORT)
os.environ["DBPROMOTE_PORT_STAGING"] = str(local_stack.free_port(55400 + 100 * WORKER))
os.environ["DBPROMOTE_PORT_PRODUCTION"] = str(local_stack.free_port(55450 + 100 * WORKER))
os.environ.update(
    # The credentials are made now, before anything starts: this session's Prefect client must carry the API's.
    local_stack.Stack(home=HOME, ports={"prefect": PREFECT_PORT, "gcs": GCS_PORT})
    .with_credentials()
    .saved()
    .client_env()
    | {
        "DBPROMOTE_GCS_RETRY_TIMEOUT_S": "20",
        "PREFECT_LOGGING_TO_API_BATCH_INTERVAL": "0.3",
        # The stack's server and worker inherit these: schedules and the worker react in seconds, not minutes.
        "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "3",
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "PREFECT_WORKER_PREFETCH_SECONDS": "5",
        # dbpromote's runs (the stack's and this process's) beat every 10 s, and a killed one is taken for dead after
        # 30 s of silence rather than 90 (three heartbeats, as in production). Not 15: nothing beats between the
        # worker's Pending and the new process's Running, and a cold flow-run process under the suite's load took
        # longer than that to start (a promotion started by a worker that had just replaced a killed one was marked
        # Crashed before it asked for approval). Not every 3 s: a heartbeat costs the server ~18 ms of CPU (its
        # trigger's bucket, the event kept; five idle runs beating for 30 s on the stack) and the suite's runs many.
        "DBPROMOTE_HEARTBEAT_S": "10",
        "DBPROMOTE_CRASHED_AFTER_S": "30",
    }
)

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def only_the_installed_namespace():
    """The repository's root is on sys.path in tests (not for users): a module reached as `tasks.x` rather than
    `dbpromote.tasks.x` would be a second copy that patches and isinstance checks miss."""
    yield
    stray = {"tasks", "flows", "deployments"} & set(sys.modules)
    assert not stray, f"imported as top-level modules: {sorted(stray)}; import them as dbpromote.<name>"


MODULE_SECONDS: dict[str, float] = {}


def pytest_runtest_logreport(report):
    """Each test's setup, call and teardown counted to its module (under xdist, in the process that reports)."""
    module = report.nodeid.split("::", 1)[0]
    MODULE_SECONDS[module] = MODULE_SECONDS.get(module, 0.0) + report.duration


def pytest_terminal_summary(terminalreporter):
    """The time by module after the slowest tests (issue 28 measures by module): with `--dist loadfile` a module
    runs on one worker, so the longest module is a floor under the suite's wall time."""
    if len(MODULE_SECONDS) > 1:
        terminalreporter.write_sep("=", "seconds by module (setup, call and teardown)")
        for module, seconds in sorted(MODULE_SECONDS.items(), key=lambda item: -item[1]):
            terminalreporter.write_line(f"{seconds:8.1f}s {module}")
        terminalreporter.write_line(f"{sum(MODULE_SECONDS.values()):8.1f}s in all")


def pytest_unconfigure(config):
    """A session that never started the stack (the fast tier) leaves no state folder behind."""
    shutil.rmtree(HOME, ignore_errors=True)


@pytest.fixture(scope="session")
def stack():
    started = local_stack.up(HOME)
    assert started.ports["prefect"] == PREFECT_PORT and started.ports["gcs"] == GCS_PORT
    pause_schedules()
    as_the_tests_expect()
    yield started
    local_stack.down(HOME)
    shutil.rmtree(HOME, ignore_errors=True)


def as_the_tests_expect() -> None:
    """The sample's targets as a team that stops its application for a deploy registers them (`--deploy stopped`),
    and production not watched after it migrates (`--watch-after 0`): a promotion runs in one phase and ends once
    verified, as the tests written before issues 32 and 33 expect; the tests of two phases (test_rolling_deploy.py)
    and of the watch (test_watch.py) set theirs for their length. `stack up` keeps it (register_blocks)."""
    from dbpromote.config import DatabaseTarget

    for server in local_stack.SERVERS:
        target = DatabaseTarget.load(server).model_copy(update={"deploy": "stopped", "watch_after_s": 0})
        target.save(server, overwrite=True)


def pause_schedules() -> None:
    """prefect.yaml's schedules off for the session: the hourly audit fired at 07:00 in the middle of a backup fault
    test and left a drift record the test took for a leftover. A test that needs a schedule adds its own."""
    from prefect import get_client

    with get_client(sync_client=True) as client:
        for deployment in client.read_deployments():
            for schedule in deployment.schedules:
                # Prefect deletes the runs the schedule had already made for the future.
                client.update_deployment_schedule(deployment.id, schedule.id, active=False)


def cancel_unfinished_runs() -> None:
    """A test's paused or running promotion must not be approved, or migrate anything, during the next test."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType
    from prefect.states import Cancelled

    unfinished = [StateType.PAUSED, StateType.RUNNING, StateType.PENDING]
    with get_client(sync_client=True) as client:
        for run in client.read_flow_runs(
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=unfinished)))
        ):
            client.set_flow_run_state(run.id, Cancelled(message="cancelled between tests"), force=True)


@pytest.fixture
def fresh_databases(stack):
    """Both sample databases back at v1 with seeded tenants (the state `dbpromote stack reset` gives)."""
    cancel_unfinished_runs()
    for server in local_stack.SERVERS:
        local_stack.reset_database(stack, server)
    return stack


@pytest.fixture(scope="module")
def promoted(stack):
    """Both databases reset to v1, then the release promoted through them as a user would."""
    from dbpromote.runs import answer_approval
    from tests.harness import PromotionInBackground

    cancel_unfinished_runs()
    for server in local_stack.SERVERS:
        local_stack.reset_database(stack, server)
    promotion = PromotionInBackground()
    answer_approval(str(promotion.paused_run().id), "approve", "alice", "release", acknowledge_risks=True)
    promotion.finish()
    assert promotion.error is None, promotion.error
    return stack


@pytest.fixture
def output_dir(request) -> Path:
    folder = Path(__file__).resolve().parents[1] / "test-output" / request.node.name
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def make_target(stack):
    """Register a variant of a stack target (say, shorter timeouts) as its own block; returns its name."""
    from dbpromote.config import DatabaseTarget

    made = []

    def make(name: str, server: str = "staging", **fields) -> str:
        base = DatabaseTarget.load(server).model_dump(exclude={"block_type_slug", "_block_document_id"})
        base["url"] = stack.database_url(server)
        DatabaseTarget(**(base | fields)).save(name, overwrite=True)
        made.append(name)
        return name

    yield make


@pytest.fixture
def project_copy(tmp_path, stack):
    """A copy of the sample project registered as its own block, for breaking it."""
    from dbpromote.config import DjangoProject
    from dbpromote.localstack import SAMPLE_PROJECT

    folder = tmp_path / "project"
    shutil.copytree(SAMPLE_PROJECT, folder, ignore=shutil.ignore_patterns("__pycache__"))

    def register(name: str, **fields) -> str:
        DjangoProject(
            **({"path": str(folder), "settings_module": "tenant_backend.settings", "python": sys.executable} | fields)
        ).save(name, overwrite=True)
        return name

    def add_settings(text: str) -> None:
        """Lines appended to the copy's settings module (what a team's settings do differently)."""
        settings = folder / "tenant_backend" / "settings.py"
        settings.write_text(settings.read_text() + "\n" + text + "\n")

    register.folder, register.add_settings = folder, add_settings
    return register
