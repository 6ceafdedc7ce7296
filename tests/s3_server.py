"""A real S3-compatible server (moto, over HTTP) on a free localhost port, once per session.

It is started with the same helpers as `recsys s3-dev`, so the tests exercise the server
developers use. The `s3_server` fixture yields an `S3Server`; each test creates its own
bucket, so tests never see each other's objects.
"""

from __future__ import annotations

import contextlib
import json
import os
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from recsys.commands import s3_dev

# Variables that would make a subprocess talk to a real AWS account or profile.
_AWS_LEAKS = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_CA_BUNDLE",
)


@dataclass(frozen=True)
class S3Server:
    """Handle on the running server: endpoint, placeholder credentials, bucket helpers."""

    endpoint: str
    log: Path
    access_key_id: str = s3_dev.ACCESS_KEY_ID
    secret_access_key: str = s3_dev.SECRET_ACCESS_KEY

    def client(self, service: str = "s3") -> Any:
        import boto3

        return boto3.client(
            service,
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
            region_name=s3_dev.REGION,
        )

    def new_bucket(self, prefix: str = "t") -> str:
        """Create a bucket with a unique name and return the name."""
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        s3_dev.ensure_bucket(self.endpoint, name)
        return name

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        pages = (
            self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        )
        return [obj["Key"] for page in pages for obj in page.get("Contents", [])]

    def aws_env(self, base: dict[str, str]) -> dict[str, str]:
        """base plus the placeholder key pair, with nothing from the user's AWS setup."""
        env = {k: v for k, v in base.items() if k not in _AWS_LEAKS}
        env.update(
            AWS_ACCESS_KEY_ID=self.access_key_id,
            AWS_SECRET_ACCESS_KEY=self.secret_access_key,
            AWS_DEFAULT_REGION=s3_dev.REGION,
            # Absent files (not os.devnull: botocore rejects a config path that is no file).
            AWS_CONFIG_FILE=str(self.log.parent / "absent-aws-config"),
            AWS_SHARED_CREDENTIALS_FILE=str(self.log.parent / "absent-aws-credentials"),
        )
        return env

    def _set_auth(self, count: str) -> str:
        """Switch moto's IAM checks (`0`: every request, `inf`: none); return the old value."""
        request = urllib.request.Request(
            self.endpoint + "/moto-api/reset-auth",
            data=count.encode(),
            method="POST",
            headers={"Content-Type": "text/plain"},
        )
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(request, timeout=10) as response:
            return json.loads(response.read())["PREVIOUS_INITIAL_NO_AUTH_ACTION_COUNT"]

    @contextlib.contextmanager
    def enforcing_credentials(self) -> Iterator[tuple[str, str]]:
        """Make the server check signatures against IAM; yield a key pair allowed `s3:*`.

        moto accepts any key by default, which would hide a wrong-credentials bug.
        """
        iam = self.client("iam")
        user = f"dvc-{uuid.uuid4().hex[:8]}"
        iam.create_user(UserName=user)
        policy = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
        }
        iam.put_user_policy(UserName=user, PolicyName="s3", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName=user)["AccessKey"]
        previous = self._set_auth("0")
        try:
            yield key["AccessKeyId"], key["SecretAccessKey"]
        finally:
            self._set_auth(previous)


@contextlib.contextmanager
def private_s3_server(folder: Path) -> Iterator[S3Server]:
    """A moto server of one's own on a free port, stopped after: for a test that flips a
    server-wide switch (IAM checks), which would fail parallel tests on a shared server."""
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / "server.log"
    port = s3_dev.free_port()
    endpoint = s3_dev.endpoint_for(port)
    try:
        proc = s3_dev.launch(port, log)
        s3_dev.wait_until_up(endpoint, proc, log)
    except s3_dev.DevError as exc:
        pytest.fail(f"cannot start the S3 test server: {exc}", pytrace=False)
    try:
        yield S3Server(endpoint=endpoint, log=log)
    finally:
        s3_dev.terminate(proc.pid)


@pytest.fixture(scope="session", name="s3_server")
def s3_server_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """Start moto's S3 server for the session; stop it (and only it) at the end.

    With RECSYS_TEST_S3_ENDPOINT set (CI starts one with `recsys s3-dev start`), that
    server is used and left running for whoever started it; every pytest worker shares it,
    each test in buckets of its own.
    """
    folder = tmp_path_factory.mktemp("s3-server")
    external = os.environ.get("RECSYS_TEST_S3_ENDPOINT", "").strip()
    if external:
        if not s3_dev.answers(external):
            pytest.fail(f"RECSYS_TEST_S3_ENDPOINT={external} does not answer", pytrace=False)
        yield S3Server(endpoint=external, log=folder / "server.log")
        return
    with private_s3_server(folder) as server:
        yield server
