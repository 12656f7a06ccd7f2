"""Task records against the real Redis: writes never leave a key without its TTL."""

from __future__ import annotations

import uuid

import redis

from worker.core.names import TASK_RECORD_KEY
from worker.core.records import TaskRecords
from worker.core.redis_client import queue_commands

TTL = 300


def create_record(records: TaskRecords, task_id: str) -> None:
    """As the producer writes it: the record's commands in one MULTI."""
    pipe = records.client.pipeline(transaction=True)
    queue_commands(pipe, records.create_commands(task_id, "noop", "default"))
    pipe.execute()


def test_revoking_an_expired_record_does_not_recreate_it(redis_client: redis.Redis) -> None:
    records = TaskRecords(redis_client, TTL)
    task_id = str(uuid.uuid4())
    assert records.mark_revoked(task_id) is False
    assert redis_client.exists(TASK_RECORD_KEY.format(task_id=task_id)) == 0


def test_revoking_a_record_flags_it_and_keeps_its_ttl(redis_client: redis.Redis) -> None:
    records = TaskRecords(redis_client, TTL)
    task_id = str(uuid.uuid4())
    create_record(records, task_id)
    assert records.mark_revoked(task_id) is True
    record, _ = records.get_with_result(task_id)
    assert record is not None and record.revoked
    assert 0 < redis_client.ttl(TASK_RECORD_KEY.format(task_id=task_id)) <= TTL
