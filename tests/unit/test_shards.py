"""Shard descriptors: never more mapped tasks than Airflow allows, every shard exactly once."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from residency.inventory import _Shards, group_shards


def _shards(sizes: list[tuple[int, int]]) -> list[dict]:
    """Shards of consecutive sources: ``(source number, objects)`` each."""
    return [{"manifest": "m", "shard": i, "last": i, "source": f"s3://b{src}", "to": "s3", "objects": n, "bytes": n}
            for i, (src, n) in enumerate(sorted(sizes))]


@given(st.lists(st.tuples(st.integers(0, 4), st.integers(1, 50)), min_size=1, max_size=300), st.integers(5, 40))
def test_grouping_covers_every_shard_once_within_the_limit(sizes, max_tasks):
    shards = _shards(sizes)
    grouped = group_shards(shards, max_tasks)
    assert len(grouped) <= max_tasks
    covered = [n for g in grouped for n in range(g["shard"], g["last"] + 1)]
    assert covered == [s["shard"] for s in shards]
    for g in grouped:
        members = shards[g["shard"]: g["last"] + 1]
        assert {m["source"] for m in members} == {g["source"]}  # one source per task
        assert g["objects"] == sum(m["objects"] for m in members)
        assert g["bytes"] == sum(m["bytes"] for m in members)


def test_few_shards_are_left_alone():
    shards = _shards([(0, 3), (0, 3), (1, 2)])
    assert group_shards(shards, 1024) == shards


def test_shards_close_by_count_or_by_bytes():
    cut = _Shards("m", size=3, max_bytes=100)
    numbers = [cut.add("s3://a", size, "s3") for size in (10, 10, 10, 10, 95, 1, 200, 5)]
    # 3 objects; then 10 + 95 > 100 closes; 96 + 1 fits; a 200-byte video alone; then a new one.
    assert numbers == [0, 0, 0, 1, 2, 2, 3, 4]
    assert [s["bytes"] for s in cut.shards] == [30, 10, 96, 200, 5]
    assert cut.add("s3://b", 1, "gs") == 5 and cut.shards[-1]["to"] == "gs"  # a new source, a new shard
