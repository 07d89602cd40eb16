"""Bucket against a real SeaweedFS: create-only, compare-and-swap, conditional GET,
multipart streaming upload, bounded download."""

from __future__ import annotations

import io
import threading

import pytest

from releaser.fleet import bucket as bucket_mod
from releaser.fleet.errors import Conflict, NotFound


def test_create_only_refuses_second_writer(bucket) -> None:
    bucket.put_create("a.json", b"one")
    with pytest.raises(Conflict):
        bucket.put_create("a.json", b"two")
    assert bucket.get("a.json").body == b"one"


def test_compare_and_swap(bucket) -> None:
    etag = bucket.put_if_match("p.json", b"v1", None)
    etag2 = bucket.put_if_match("p.json", b"v2", etag)
    with pytest.raises(Conflict):
        bucket.put_if_match("p.json", b"v3", etag)  # stale
    assert bucket.get("p.json") == bucket_mod.Object(b"v2", etag2)
    with pytest.raises(Conflict):
        bucket.put_if_match("missing.json", b"x", etag2)


def test_concurrent_cas_has_one_winner(bucket) -> None:
    etag = bucket.put_if_match("race.json", b"base", None)
    wins: list[int] = []
    barrier = threading.Barrier(8)

    def writer(i: int) -> None:
        barrier.wait()
        try:
            bucket.put_if_match("race.json", f"w{i}".encode(), etag)
            wins.append(i)
        except Conflict:
            pass

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1
    assert bucket.get("race.json").body == f"w{wins[0]}".encode()


def test_conditional_get(bucket) -> None:
    etag = bucket.put_if_match("c.json", b"v1", None)
    assert bucket.get_if_changed("c.json", etag) is None
    bucket.put_if_match("c.json", b"v2", etag)
    changed = bucket.get_if_changed("c.json", etag)
    assert changed is not None and changed.body == b"v2"
    with pytest.raises(NotFound):
        bucket.get_if_changed("nope.json", etag)
    with pytest.raises(NotFound):
        bucket.get("nope.json")


def test_multipart_upload_streams_and_is_create_only(bucket, monkeypatch) -> None:
    monkeypatch.setattr(bucket_mod, "PART_SIZE", 5 << 20)
    data = bytes(range(256)) * (11 << 20 >> 8)  # 11 MiB: three parts
    chunks = (data[i:i + 300_000] for i in range(0, len(data), 300_000))
    assert bucket.upload_stream("big.bin", chunks) == len(data)
    out = io.BytesIO()
    assert bucket.download("big.bin", out, max_bytes=len(data)) == len(data)
    assert out.getvalue() == data
    with pytest.raises(Conflict):
        bucket.upload_stream("big.bin", iter([data[:6 << 20], data[:6 << 20]]))
    with pytest.raises(bucket_mod.BucketError):
        bucket.download("big.bin", io.BytesIO(), max_bytes=len(data) - 1)
    assert list(bucket.list("big")) == ["big.bin"]
