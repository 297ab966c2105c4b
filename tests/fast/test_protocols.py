"""The answers of the two child processes (the probe, the backup stream): typed on both sides, the unexpected named."""

import json
from dataclasses import asdict

import pytest
from pydantic import ValidationError

from dbpromote.backup_stream import ANSWER as STREAM_ANSWER
from dbpromote.backup_stream import Progress, Streamed, StreamFailed
from dbpromote.errors import ConfigError
from dbpromote.probe import parse_answer
from dbpromote.probe.protocol import FailureAnswer, MigrationInfo, OperationInfo, PlanAnswer, StepAnswer, encode


def test_every_probe_answer_reads_back_as_the_answer_it_was():
    plan = PlanAnswer(
        applied=[("core", "0001_initial")],
        migrations=[
            MigrationInfo(
                app="core",
                name="0002_flag",
                atomic=True,
                reversible=True,
                operations=[OperationInfo(kind="AddField", description="Add field x", null=False, has_default=True)],
                sql=["ALTER TABLE x ADD COLUMN y int DEFAULT 0"],
            )
        ],
    )
    for answer in (plan, StepAnswer(already_applied=False, duration_s=0.2), FailureAnswer(reason="lock", message="m")):
        assert parse_answer(encode(answer)) == answer


def test_an_answer_the_worker_does_not_know_is_an_error_that_names_it():
    with pytest.raises(ConfigError, match="does not understand .*'kind': 'surprise'"):
        parse_answer(json.dumps({"kind": "surprise"}))
    with pytest.raises(ConfigError, match="does not understand"):
        parse_answer(json.dumps(asdict(FailureAnswer(reason="lock", message="m")) | {"reason": "gremlins"}))


def test_a_line_that_is_not_json_means_the_probe_died_before_answering():
    assert parse_answer(b"Traceback (most recent call last):") is None


def test_backup_stream_answers_are_told_apart_by_kind():
    assert STREAM_ANSWER.validate_json(Progress(dumped=5).model_dump_json()) == Progress(dumped=5)
    assert STREAM_ANSWER.validate_json(Streamed(crc32c="x", size=1).model_dump_json()) == Streamed(crc32c="x", size=1)
    failed = StreamFailed(reason="pg_dump", message="connection lost")
    assert STREAM_ANSWER.validate_json(failed.model_dump_json()) == failed
    with pytest.raises(ValidationError):
        STREAM_ANSWER.validate_json('{"kind": "failed", "reason": "gremlins"}')
