"""No step is ever answered from Prefect's cache.

Prefect's default cache policy keys a task by its inputs, its source and the flow run's id; where a team turns
result persistence on (PREFECT_RESULTS_PERSIST_BY_DEFAULT, a common server setting), a task called again with
the same inputs in the same run returns the first call's result without running. A suspended promotion resumes
as the same run, and checks everything again after its approval: the database answering, the bucket taking
writes, drift, no other run holding the targets; each of those would have been answered from before the wait,
however long it was. Every task dbpromote defines therefore opts out (NO_CACHE)."""

import importlib
import pkgutil

import dbpromote.flows
import dbpromote.tasks
import pytest
from prefect import Task
from prefect.cache_policies import NO_CACHE


def tasks() -> list[Task]:
    """Every task of tasks/ and flows/: those defined there, and those made there of a library function."""
    found: dict[int, Task] = {}
    for package in (dbpromote.tasks, dbpromote.flows):
        for module in pkgutil.iter_modules(package.__path__):
            loaded = importlib.import_module(f"{package.__name__}.{module.name}")
            found |= {id(value): value for value in vars(loaded).values() if isinstance(value, Task)}
    return list(found.values())


@pytest.mark.parametrize("step", tasks(), ids=lambda step: step.name)
def test_every_task_opts_out_of_prefects_cache(step):
    assert step.cache_policy is NO_CACHE, f"{step.name} ({step.fn.__module__}) has cache_policy {step.cache_policy}"
