"""dbpromote's blocks keep their JSON schema from the first time Prefect asks (it asks once per field on every save):
what they answer is what Prefect generates, and what a caller does to its copy never reaches the next one."""

import pytest
from prefect.blocks.core import Block

from dbpromote.config import DatabaseTarget, DjangoProject, TargetGroup


@pytest.mark.parametrize("block_class", [DjangoProject, DatabaseTarget, TargetGroup])
def test_a_blocks_schema_is_prefects_and_each_caller_gets_its_own_copy(block_class):
    generated = Block.model_json_schema.__func__(block_class)
    first = block_class.model_json_schema()
    assert first == generated and "secret_fields" in first

    first["secret_fields"].append("mangled")
    first.pop("properties")
    assert block_class.model_json_schema() == generated
    # The checksum Prefect registers the block's schema under is unchanged: `stack up` and `deploy` find it registered.
    assert block_class._calculate_schema_checksum() == block_class._calculate_schema_checksum(generated)


def test_each_block_class_keeps_its_own_schema():
    assert DatabaseTarget.model_json_schema()["title"] != DjangoProject.model_json_schema()["title"]
