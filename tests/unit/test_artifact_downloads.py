"""Download rules without I/O: ranges, validators, file names, the HttpBody wire view, settings."""

from __future__ import annotations

import pytest
from google.api import httpbody_pb2
from google.protobuf import any_pb2

from aias.core.errors import InvalidArgument, OutOfRange
from aias.core.settings import Env, SettingsError
from aias.gateway.transcoder import RawHttpBody
from aias.services.artifacts.domain import (
    Answer,
    ByteWindow,
    DownloadRequest,
    content_disposition,
    plan_download,
)
from aias.services.artifacts.main import load_settings
from aias.services.artifacts.s3settings import S3Location
from aias.services.artifacts.servicer import http_body_wire

SHA = "ab" * 32
TAG = f'"{SHA}"'
BASE_ENV = {
    "AIAS_INTERNAL_TOKEN": "x" * 32,
    "AIAS_APP_DATABASE_URL": "postgresql://u:p@localhost/db",
    "AIAS_TENANCY_ADDR": "localhost:1",
    "AIAS_EXECUTION_ADDR": "localhost:2",
}


def plan(size: int = 1000, **request: int | str) -> tuple[Answer, ByteWindow]:
    found = plan_download(DownloadRequest(**request), size, SHA)  # type: ignore[arg-type]
    return found.answer, found.window


def test_no_range_is_the_whole_body() -> None:
    assert plan() == (Answer.FULL, ByteWindow(0, 1000))


@pytest.mark.parametrize(
    ("header", "window"),
    [
        ("bytes=0-0", ByteWindow(0, 1)),
        ("bytes=10-19", ByteWindow(10, 10)),
        ("bytes=999-999", ByteWindow(999, 1)),
        ("bytes=-1", ByteWindow(999, 1)),
        ("bytes=-5000", ByteWindow(0, 1000)),
        ("bytes=990-", ByteWindow(990, 10)),
        ("bytes=990-5000", ByteWindow(990, 10)),
        ("Bytes = 0-", ByteWindow(0, 1000)),
    ],
)
def test_a_single_range(header: str, window: ByteWindow) -> None:
    assert plan(range_header=header) == (Answer.PARTIAL, window)
    assert window.content_range(1000).startswith(f"bytes {window.offset}-")


@pytest.mark.parametrize(
    "header", ["bytes=0-1,5-6", "bytes=5-1", "lines=0-1", "bytes=x-", "bytes="]
)
def test_several_or_invalid_ranges_are_ignored(header: str) -> None:
    assert plan(range_header=header) == (Answer.FULL, ByteWindow(0, 1000))


@pytest.mark.parametrize(
    ("size", "header"), [(1000, "bytes=1000-"), (1000, "bytes=-0"), (0, "bytes=0-")]
)
def test_unsatisfiable_ranges_carry_the_size(size: int, header: str) -> None:
    with pytest.raises(OutOfRange) as refused:
        plan(size, range_header=header)

    assert refused.value.metadata == {"http_status": "416", "content_range": f"bytes */{size}"}


@pytest.mark.parametrize("header", [TAG, f"W/{TAG}", f'"x", {TAG}', f'W/"x",W/{TAG}', "*"])
def test_if_none_match_names_the_content(header: str) -> None:
    assert plan(if_none_match=header)[0] is Answer.NOT_MODIFIED
    assert plan(if_none_match=header, range_header="bytes=0-0")[0] is Answer.NOT_MODIFIED


@pytest.mark.parametrize("header", ['"x"', SHA, f'"{SHA[:-1]}"', ""])
def test_if_none_match_for_other_content_sends_it(header: str) -> None:
    assert plan(if_none_match=header)[0] is Answer.FULL


def test_if_range_needs_a_strong_match() -> None:
    assert plan(range_header="bytes=0-0", if_range=TAG)[0] is Answer.PARTIAL
    assert plan(range_header="bytes=0-0", if_range=f"W/{TAG}")[0] is Answer.FULL
    assert plan(range_header="bytes=0-0", if_range="Wed, 21 Oct 2015 07:28:00 GMT")[0] is (
        Answer.FULL
    )


def test_grpc_windows() -> None:
    assert plan(offset=10, length=5) == (Answer.PARTIAL, ByteWindow(10, 5))
    assert plan(offset=990) == (Answer.PARTIAL, ByteWindow(990, 10))
    assert plan(offset=0, length=1000) == (Answer.FULL, ByteWindow(0, 1000))
    with pytest.raises(OutOfRange):
        plan(offset=1000)
    with pytest.raises(OutOfRange):
        plan(offset=999, length=2)
    with pytest.raises(InvalidArgument):
        plan(offset=-1)
    with pytest.raises(InvalidArgument):
        plan(offset=1, range_header="bytes=0-0")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("report.pdf", 'attachment; filename="report.pdf"'),
        ('a "b".txt', "attachment; filename=\"a _b_.txt\"; filename*=UTF-8''a%20%22b%22.txt"),
        ("50%.txt", "attachment; filename=\"50_.txt\"; filename*=UTF-8''50%25.txt"),
        ("é.txt", "attachment; filename=\"_.txt\"; filename*=UTF-8''%C3%A9.txt"),
    ],
)
def test_content_disposition(name: str, expected: str) -> None:
    assert content_disposition(name) == expected


def test_the_http_body_wire_view_reads_what_protobuf_writes() -> None:
    extension = any_pb2.Any(type_url="type.googleapis.com/x", value=b"\x08\x01")
    message = httpbody_pb2.HttpBody(
        content_type="text/plain; charset=utf-8", data=bytes(range(256)) * 700
    )
    message.extensions.append(extension)

    parsed = RawHttpBody.parse(message.SerializeToString())
    empty = RawHttpBody.parse(b"")

    assert (parsed.content_type, bytes(parsed.data)) == (message.content_type, message.data)
    assert (empty.content_type, bytes(empty.data)) == ("", b"")
    with pytest.raises(ValueError, match="truncated"):
        RawHttpBody.parse(message.SerializeToString()[:-1])


@pytest.mark.parametrize(
    ("url", "bucket", "prefix"),
    [
        ("s3://b", "b", ""),
        ("s3://b/", "b", ""),
        ("s3://b/x/y/", "b", "x/y/"),
        ("s3://b/x", "b", "x/"),
    ],
)
def test_s3_locations(url: str, bucket: str, prefix: str) -> None:
    assert S3Location.parse(url) == S3Location(bucket, prefix)


def test_the_store_setting_chooses_s3_with_the_usual_variables() -> None:
    settings = load_settings(
        Env(
            {
                **BASE_ENV,
                "AIAS_ARTIFACTS_STORE": "s3://blobs/aias",
                "AWS_ENDPOINT_URL": "http://minio:9000",
                "AWS_ACCESS_KEY_ID": "id",
                "AWS_SECRET_ACCESS_KEY": "secret",
                "AWS_REGION": "eu-west-1",
            }
        )
    )

    assert settings.s3 is not None
    assert settings.s3.location == S3Location("blobs", "aias/")
    assert (settings.s3.endpoint_url, settings.s3.region) == ("http://minio:9000", "eu-west-1")
    assert load_settings(Env(BASE_ENV)).s3 is None


def test_bad_store_settings_are_named() -> None:
    with pytest.raises(SettingsError) as failed:
        load_settings(
            Env(
                {
                    **BASE_ENV,
                    "AIAS_ARTIFACTS_STORE": "gs://elsewhere",
                    "AIAS_ARTIFACTS_TEMP_MAX_AGE_SECONDS": "1",
                }
            )
        )
    with pytest.raises(SettingsError) as half:
        load_settings(
            Env(
                {
                    **BASE_ENV,
                    "AIAS_ARTIFACTS_STORE": "s3://b",
                    "AWS_ACCESS_KEY_ID": "id",
                    "AWS_ENDPOINT_URL": "minio:9000",
                    "AIAS_ARTIFACTS_S3_PART_BYTES": "1024",
                }
            )
        )

    assert "AIAS_ARTIFACTS_STORE must look like s3://bucket/prefix" in str(failed.value)
    assert "AIAS_ARTIFACTS_TEMP_MAX_AGE_SECONDS" in str(failed.value)
    assert "AWS_SECRET_ACCESS_KEY" in str(half.value)
    assert "http(s) URL" in str(half.value)
    assert "AIAS_ARTIFACTS_S3_PART_BYTES" in str(half.value)


@pytest.mark.parametrize(
    ("data", "content_type"),
    [
        (b"", "text/plain"),
        (b"x", ""),
        (bytes(range(256)) * 1024, "application/octet-stream"),
        (b"\x00" * 127, "a/" + "b" * 200),
        (b"\x01" * 128, ""),
        (b"", ""),
    ],
)
def test_download_wire_bytes_are_the_http_body_protobuf_would_write(
    data: bytes, content_type: str
) -> None:
    wire = http_body_wire(data, content_type)
    expected = httpbody_pb2.HttpBody(content_type=content_type, data=data)
    assert wire == expected.SerializeToString()
    assert httpbody_pb2.HttpBody.FromString(wire) == expected
    parsed = RawHttpBody.parse(wire)
    assert (parsed.content_type, bytes(parsed.data)) == (content_type, data)
