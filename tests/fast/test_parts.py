"""A step's parts run inside the calling run retried as their tasks would be (flows/parts.py), and the crash
automation's window is a setting with its floor (dbpromote/deploying.py): no server."""

import importlib
from pathlib import Path

import pytest
from dbpromote.flows.parts import as_task_run, in_the_calling_run
from prefect import task

from dbpromote.deploying import CRASHED_AFTER_S, crashed_after_s
from dbpromote.errors import ConfigError, DbpromoteError, InputError

ROOT = Path(__file__).resolve().parents[2]


def failing(times: int, error: Exception):
    """A task that fails `times` times with `error`, then answers how many calls it took."""
    calls = []

    @task(name="flaky", retries=2, retry_delay_seconds=0)
    def flaky() -> int:
        calls.append(1)
        if len(calls) <= times:
            raise error
        return len(calls)

    return flaky, calls


def test_a_part_in_the_calling_run_is_tried_again_on_what_may_pass_as_often_as_its_task_would_be():
    flaky, _ = failing(2, DbpromoteError("the server went away", transient=True))
    assert in_the_calling_run(flaky)() == 3
    flaky, calls = failing(3, DbpromoteError("the server went away", transient=True))
    with pytest.raises(DbpromoteError, match="went away"):
        in_the_calling_run(flaky)()
    assert len(calls) == 3  # its two retries, no more


def test_a_part_in_the_calling_run_is_never_tried_again_on_what_will_not_pass():
    flaky, calls = failing(1, InputError("no such option"))
    with pytest.raises(InputError):
        in_the_calling_run(flaky)()
    assert len(calls) == 1


def test_a_part_as_a_task_run_is_its_task():
    flaky, _ = failing(0, RuntimeError())
    assert as_task_run(flaky) is flaky


def test_the_crash_window_is_90_s_unless_set_and_never_under_two_heartbeats_nor_prefects_floor(monkeypatch):
    monkeypatch.delenv("DBPROMOTE_HEARTBEAT_S", raising=False)
    monkeypatch.delenv("DBPROMOTE_CRASHED_AFTER_S", raising=False)
    assert crashed_after_s() == CRASHED_AFTER_S == 90
    monkeypatch.setenv("DBPROMOTE_CRASHED_AFTER_S", "60")
    assert crashed_after_s() == 60
    for given in ("45", "a minute", "-90"):
        monkeypatch.setenv("DBPROMOTE_CRASHED_AFTER_S", given)
        with pytest.raises(ConfigError, match="DBPROMOTE_CRASHED_AFTER_S .* at least 60"):
            crashed_after_s()
    monkeypatch.setenv("DBPROMOTE_HEARTBEAT_S", "3")
    for given, shortest in (("6", 10), ("9", 10)):
        monkeypatch.setenv("DBPROMOTE_CRASHED_AFTER_S", given)
        with pytest.raises(ConfigError, match=f"at least {shortest} .*never under 10"):
            crashed_after_s()
    monkeypatch.setenv("DBPROMOTE_CRASHED_AFTER_S", "15")
    assert crashed_after_s() == 15


def test_heartbeats_come_every_30_s_unless_set_and_never_less_than_a_second_apart(monkeypatch):
    from dbpromote.deploying import heartbeat_s

    monkeypatch.delenv("DBPROMOTE_HEARTBEAT_S", raising=False)
    assert heartbeat_s() == 30
    monkeypatch.setenv("DBPROMOTE_HEARTBEAT_S", "2")
    assert heartbeat_s() == 2
    for given in ("0", "half a minute", "-5"):
        monkeypatch.setenv("DBPROMOTE_HEARTBEAT_S", given)
        with pytest.raises(ConfigError, match="DBPROMOTE_HEARTBEAT_S .* at least 1"):
            heartbeat_s()


def test_every_one_of_dbpromotes_flows_sends_its_own_heartbeats():
    """The crash automation watches every run of dbpromote's flows by name (dbpromote/deploying.py): a flow made
    with Prefect's @flow rather than flows/parts.py's would beat only if Prefect's heartbeat were set, and be taken
    for dead after 90 s where it is not."""
    from dbpromote.flows.parts import beating
    from prefect import Flow

    from dbpromote.deploying import flow_names

    def made_by_beating(found: Flow) -> bool:
        return found.fn.__code__ is beating(lambda: None).__code__

    found = {}
    for module in sorted((ROOT / "flows").glob("*.py")):
        namespace = vars(importlib.import_module(f"dbpromote.flows.{module.stem}"))
        found |= {flow.name: made_by_beating(flow) for flow in namespace.values() if isinstance(flow, Flow)}
    assert set(found) == set(flow_names()) and len(found) > 10
    assert all(found.values()), [name for name, beats in found.items() if not beats]
