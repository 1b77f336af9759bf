"""The one chunked add-partitions helper every area uses, on a real (ephemeral) Dagster instance."""

from __future__ import annotations

import dagster as dg

from assemblage_assets.partitions import IMAGE_SHARDS, MAX_KEYS_PER_ADD, add_partitions, add_partitions_requests


def test_add_partitions_adds_only_missing_keys_in_chunks(monkeypatch) -> None:
    instance = dg.DagsterInstance.ephemeral()
    calls: list[int] = []
    original = instance.add_dynamic_partitions

    def counting(name: str, keys: list[str]) -> None:
        calls.append(len(keys))
        original(name, keys)

    monkeypatch.setattr(instance, "add_dynamic_partitions", counting)
    keys = [f"shard-{i:05d}" for i in range(2 * MAX_KEYS_PER_ADD + 345)]
    assert add_partitions(instance, IMAGE_SHARDS, keys[:10]) == keys[:10]
    added = add_partitions(instance, IMAGE_SHARDS, keys + keys[:5])  # duplicates and known keys are skipped
    assert added == keys[10:]
    assert calls == [10, MAX_KEYS_PER_ADD, MAX_KEYS_PER_ADD, 335]
    assert sorted(instance.get_dynamic_partitions(IMAGE_SHARDS)) == keys
    assert add_partitions(instance, IMAGE_SHARDS, keys) == []


def test_sensor_requests_are_chunked_the_same_way() -> None:
    keys = [f"k{i}" for i in range(MAX_KEYS_PER_ADD + 1)]
    requests = add_partitions_requests(IMAGE_SHARDS, keys)
    assert [len(r.partition_keys) for r in requests] == [MAX_KEYS_PER_ADD, 1]
    assert {r.partitions_def_name for r in requests} == {IMAGE_SHARDS}
