"""URL parsing and formatting: every form the application database may hold."""

from __future__ import annotations

import pytest

from residency.errors import PolicyError
from residency.uris import ObjectRef, UrlStyle, format_url, parse_uri, parse_url

S3 = lambda b, k: ObjectRef("s3", b, k)  # noqa: E731
GS = lambda b, k: ObjectRef("gs", b, k)  # noqa: E731


@pytest.mark.parametrize(
    "url, ref, style, region",
    [
        pytest.param("s3://seoul-photos/a/b.jpg", S3("seoul-photos", "a/b.jpg"), UrlStyle.S3_URI, None, id="s3 uri"),
        pytest.param("s3://seoul-photos/夏 休み.jpg", S3("seoul-photos", "夏 休み.jpg"), UrlStyle.S3_URI, None,
                     id="s3 uri keeps unicode and spaces verbatim"),
        pytest.param("s3://b-1/a%20b.jpg", S3("b-1", "a%20b.jpg"), UrlStyle.S3_URI, None,
                     id="s3 uri does not percent-decode"),
        pytest.param("https://seoul-photos.s3.ap-northeast-2.amazonaws.com/u/%EC%82%AC%EC%A7%84.png",
                     S3("seoul-photos", "u/사진.png"), UrlStyle.S3_VIRTUAL, "ap-northeast-2", id="virtual hosted style"),
        pytest.param("https://seoul-photos.s3-ap-northeast-2.amazonaws.com/x.png",
                     S3("seoul-photos", "x.png"), UrlStyle.S3_VIRTUAL, "ap-northeast-2", id="legacy dash region"),
        pytest.param("https://my.dotted.bucket.s3.amazonaws.com/x.png",
                     S3("my.dotted.bucket", "x.png"), UrlStyle.S3_VIRTUAL, None, id="global endpoint dotted bucket"),
        pytest.param("https://s3.ap-northeast-2.amazonaws.com/seoul-photos/a+b.jpg",
                     S3("seoul-photos", "a+b.jpg"), UrlStyle.S3_PATH, "ap-northeast-2",
                     id="path style: plus is a literal plus"),
        pytest.param("https://s3.ap-northeast-2.amazonaws.com/seoul-photos/100%25.jpg",
                     S3("seoul-photos", "100%.jpg"), UrlStyle.S3_PATH, "ap-northeast-2", id="path style percent"),
        pytest.param("https://b.s3.dualstack.ap-northeast-2.amazonaws.com/k.gif",
                     S3("b", "k.gif"), UrlStyle.S3_VIRTUAL, "ap-northeast-2", id="dualstack"),
        pytest.param("gs://seoul-media/v/clip.mp4", GS("seoul-media", "v/clip.mp4"), UrlStyle.GS_URI, None, id="gs uri"),
        pytest.param("https://storage.googleapis.com/seoul-media/a%20b.mp4", GS("seoul-media", "a b.mp4"),
                     UrlStyle.GS_PATH, None, id="gcs path style"),
        pytest.param("https://seoul-media.storage.googleapis.com/a.mp4", GS("seoul-media", "a.mp4"),
                     UrlStyle.GS_VIRTUAL, None, id="gcs virtual hosted"),
    ],
)
def test_parse_url(url, ref, style, region):
    parsed = parse_url(url)
    assert parsed is not None
    assert (parsed.ref, parsed.style, parsed.region) == (ref, style, region)


@pytest.mark.parametrize(
    "url",
    [None, "", "not a url", "https://cdn.example.jp/x.png", "s3://bucket-only", "s3://b/",
     "https://s3.ap-northeast-2.amazonaws.com/bucket-only", "ftp://b/k"],
)
def test_non_object_urls_are_ignored(url):
    assert parse_url(url) is None


@pytest.mark.parametrize(
    "style, region, expected",
    [
        (UrlStyle.S3_URI, None, "s3://tokyo/seoul/夏 休み+1%.jpg"),
        (UrlStyle.S3_VIRTUAL, "ap-northeast-1",
         "https://tokyo.s3.ap-northeast-1.amazonaws.com/seoul/%E5%A4%8F%20%E4%BC%91%E3%81%BF%2B1%25.jpg"),
        (UrlStyle.S3_PATH, "ap-northeast-1",
         "https://s3.ap-northeast-1.amazonaws.com/tokyo/seoul/%E5%A4%8F%20%E4%BC%91%E3%81%BF%2B1%25.jpg"),
        (UrlStyle.S3_PATH, "us-east-1", "https://s3.amazonaws.com/tokyo/seoul/%E5%A4%8F%20%E4%BC%91%E3%81%BF%2B1%25.jpg"),
    ],
)
def test_format_url_round_trips(style, region, expected):
    ref = S3("tokyo", "seoul/夏 休み+1%.jpg")
    url = format_url(ref, style, region)
    assert url == expected
    parsed = parse_url(url)
    assert parsed.ref == ref and parsed.style == style


def test_format_keeps_query_and_maps_style_across_providers():
    assert format_url(S3("t", "a.jpg"), UrlStyle.S3_VIRTUAL, "ap-northeast-1", "v=2") == \
        "https://t.s3.ap-northeast-1.amazonaws.com/a.jpg?v=2"
    assert format_url(GS("t", "a b.jpg"), UrlStyle.S3_PATH) == "https://storage.googleapis.com/t/a%20b.jpg"
    assert format_url(GS("t", "a.jpg"), UrlStyle.S3_URI) == "gs://t/a.jpg"


@pytest.mark.parametrize("uri", ["http://x/y", "s3:/x", "s3://UPPER/k", "s3://a/k", "gs://"])
def test_parse_uri_rejects_with_field_name(uri):
    with pytest.raises(PolicyError) as err:
        parse_uri(uri, "sources[0].uri")
    assert "sources[0].uri" in str(err.value) and repr(uri) in str(err.value)
