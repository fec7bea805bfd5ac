from __future__ import annotations

import pytest

from residency.jurisdictions import placement_of


@pytest.mark.parametrize(
    "provider, location, country",
    [
        ("s3", "ap-northeast-2", "KR"),
        ("s3", "ap-northeast-1", "JP"),
        ("s3", "ap-northeast-3", "JP"),  # Osaka, not Seoul: no guessing from the prefix
        ("s3", "cn-north-1", "CN"),
        ("s3", "", "US"),  # GetBucketLocation answers None for us-east-1
        ("s3", "EU", "IE"),  # legacy answer for eu-west-1
        ("gs", "asia-northeast3", "KR"),
        ("gs", "ASIA-NORTHEAST1", "JP"),
        ("gs", "asia-northeast2", "JP"),
        ("gs", "ASIA1", "JP"),  # dual-region Tokyo + Osaka
        ("gs", "ASIA", None),  # multi-region: several countries, never domestic
        ("gs", "EU", None),
        ("gs", "US", None),
        ("gs", "EUR4", None),  # Finland + Netherlands
        ("s3", "mars-north-1", None),
    ],
)
def test_region_to_jurisdiction(provider, location, country):
    assert placement_of(provider, location).jurisdiction == country


def test_multi_region_is_never_domestic_and_declared_is_kept():
    assert not placement_of("gs", "ASIA").is_in("JP")
    placement = placement_of("gs", "asia-northeast1", source="declared")
    assert placement.is_in("jp") and placement.source == "declared"
