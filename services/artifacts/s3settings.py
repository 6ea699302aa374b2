"""Where the S3 blob store puts blobs and how it reaches them; importable without botocore."""

from __future__ import annotations

from dataclasses import dataclass

MIB = 1024 * 1024
# S3 refuses parts under 5 MiB (all but the last); larger parts mean fewer requests per blob.
MIN_PART_BYTES = 5 * MIB
DEFAULT_PART_BYTES = 8 * MIB
# One CopyObject copies at most 5 GiB; larger blobs are copied part by part.
MAX_COPY_BYTES = 5 * 1024 * MIB
COPY_PART_BYTES = 1024 * MIB


@dataclass(frozen=True)
class S3Location:
    """A bucket and a key prefix (empty, or ending in `/`), from `s3://bucket/prefix`."""

    bucket: str
    prefix: str

    @classmethod
    def parse(cls, url: str) -> S3Location:
        scheme, sep, rest = url.partition("://")
        if scheme != "s3" or not sep:
            raise ValueError(f"must look like s3://bucket/prefix, got {url!r}")
        bucket, _, prefix = rest.partition("/")
        if not bucket:
            raise ValueError(f"names no bucket: {url!r}")
        prefix = prefix.strip("/")
        return cls(bucket, f"{prefix}/" if prefix else "")


@dataclass(frozen=True)
class S3Settings:
    """Where blobs go and how to reach it; unset credentials use botocore's usual chain."""

    location: S3Location
    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None
    session_token: str | None = None
    part_bytes: int = DEFAULT_PART_BYTES
