"""A real S3 endpoint for tests: a moto server on loopback with one bucket.

    (the fixture `moto_s3`, module-scoped, is registered in tests/conftest.py)

    def test_x(moto_s3):
        write_bytes(f"s3://{moto_s3.bucket}/k", b"x")            # via the AWS_* env vars
        moto_s3.client().get_object(Bucket=moto_s3.bucket, Key="k")

While it runs, the AWS env vars point at it (dummy credentials, region us-east-1, EC2 metadata
lookups off, any profile/session token/S3-specific endpoint removed); they are restored after.
`moto_s3_server()` is the same as a context manager, for use outside pytest.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import pytest

REGION = "us-east-1"
_UNSET = ("AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_PROFILE")


@dataclass(frozen=True)
class MotoS3:
    endpoint: str  # http://127.0.0.1:PORT
    bucket: str
    env: dict[str, str] = field(default_factory=dict)  # the AWS_* values set while it runs

    def client(self):
        """A boto3 S3 client talking to this server."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"],
        )

    def keys(self, prefix: str = "") -> list[str]:
        """The object keys in the bucket under `prefix`, sorted."""
        pages = (
            self.client()
            .get_paginator("list_objects_v2")
            .paginate(Bucket=self.bucket, Prefix=prefix)
        )
        return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))


@contextmanager
def moto_s3_server(bucket: str = "hazard-test") -> Iterator[MotoS3]:
    """Start moto on 127.0.0.1 (free port), create `bucket`, set the AWS env; undo on exit."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    env = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": REGION,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    saved = {k: os.environ.get(k) for k in (*env, *_UNSET)}
    try:
        for key in _UNSET:
            os.environ.pop(key, None)
        os.environ.update(env)
        s3 = MotoS3(endpoint=endpoint, bucket=bucket, env=env)
        s3.client().create_bucket(Bucket=bucket)
        yield s3
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        server.stop()


@pytest.fixture(scope="module")
def moto_s3() -> Iterator[MotoS3]:
    """A moto S3 server with an empty bucket for the test module (see the module docstring)."""
    with moto_s3_server() as s3:
        yield s3
