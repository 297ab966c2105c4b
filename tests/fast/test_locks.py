"""A step whose locks are not granted is attempted again after a bounded backoff (dbpromote/locks.py): no server."""

import pytest

from dbpromote.config import DatabaseTarget
from dbpromote.errors import MigrationError
from dbpromote.locks import LocksBusy, retrying_locks


def a_target(max_lock_wait_s: float) -> DatabaseTarget:
    return DatabaseTarget(url="postgresql://u@h/d", lock_timeout_ms=10, max_lock_wait_s=max_lock_wait_s).named("shop")


def test_an_attempt_is_made_again_until_it_gets_its_locks():
    attempts = []

    def attempt(number: int) -> str:
        attempts.append(number)
        if number < 3:
            raise LocksBusy("canceling statement due to lock timeout")
        return "done"

    assert retrying_locks(a_target(5), "core.0003", attempt, "nothing of it is applied") == "done"
    assert attempts == [1, 2, 3]


def test_past_the_bound_the_sentence_says_what_waited_how_long_and_what_it_left():
    def attempt(number: int) -> str:
        raise LocksBusy()

    with pytest.raises(MigrationError) as refused:
        retrying_locks(a_target(0.6), "The undo", attempt, "nothing was put back")
    message = str(refused.value)
    assert message.startswith("The undo could not get its locks on shop in ")
    assert "(lock_timeout 10 ms); nothing was put back: find the session holding them" in message
