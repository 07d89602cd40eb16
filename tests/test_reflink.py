"""The reflink path, for real: a store on a loop-mounted XFS image with reflink=1.

The copy engine clones the candidate (FICLONE) when the filesystem allows, reads
the clone once to hash it, and patches a WAL-mode header (bytes 18-19) with a
pwrite into the clone. Here the published release must share its data extents
with the build (FIEMAP: same physical blocks, FIEMAP_EXTENT_SHARED), be byte for
byte the build (but for the patched header), and leave the build untouched.
Needs root, a loop device and mkfs.xfs (Debian xfsprogs): skipped without them,
except under CI=true, where it must run.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import sqlite3
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import Env, config_text
from .sample import write_sample

FS_IOC_FIEMAP = 0xC020660B
FIEMAP_FLAG_SYNC = 0x1
FIEMAP_EXTENT_SHARED = 0x2000
EXTENT = struct.Struct("=QQQ16xI12x")  # fe_logical, fe_physical, fe_length, fe_flags
HEADER = struct.Struct("=QQIIII")  # fm_start, fm_length, fm_flags, mapped, count, reserved


def extents(path: Path, count: int = 512) -> list[tuple[int, int, int, int]]:
    """(logical, physical, length, flags) of each extent, by the FIEMAP ioctl."""
    buf = bytearray(HEADER.pack(0, 2**64 - 1, FIEMAP_FLAG_SYNC, 0, count, 0)
                    + bytes(EXTENT.size * count))
    with open(path, "rb") as fh:
        fcntl.ioctl(fh.fileno(), FS_IOC_FIEMAP, buf)
    mapped = HEADER.unpack_from(buf)[3]
    return [EXTENT.unpack_from(buf, HEADER.size + i * EXTENT.size) for i in range(mapped)]


def _needs(ok: bool, why: str) -> None:
    if ok:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must run the reflink test: {why}")
    pytest.skip(why)


@pytest.fixture
def xfs(tmp_path: Path) -> Iterator[Path]:
    """A reflink-capable XFS filesystem, loop-mounted under tmp_path."""
    _needs(os.geteuid() == 0, "needs root to loop-mount an XFS image")
    _needs(shutil.which("mkfs.xfs") is not None, "needs mkfs.xfs (Debian: xfsprogs)")
    image, mnt = tmp_path / "xfs.img", tmp_path / "mnt"
    with open(image, "wb") as fh:
        fh.truncate(300 << 20)  # the smallest XFS mkfs.xfs accepts
    subprocess.run(["mkfs.xfs", "-q", "-m", "reflink=1", str(image)], check=True)
    mnt.mkdir()
    mounted = subprocess.run(["mount", "-o", "loop", str(image), str(mnt)],
                             capture_output=True, text=True)
    _needs(mounted.returncode == 0, f"cannot loop-mount: {mounted.stderr.strip()}")
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)]).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)])


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_publish_on_xfs_clones_the_build_and_patches_a_wal_header(xfs: Path) -> None:
    env = Env(tmp=xfs, config=xfs / "releaser.toml", live=xfs / "app" / "tags.db",
              root=xfs / "store")
    env.config.write_text(config_text(env.live, env.root))
    env.cli("init")

    # a WAL-mode build (no pending WAL): the release is the build with bytes 18-19 = 1
    wal_build = write_sample(xfs / "builds" / "wal.db", rows=6000, seed=1)
    conn = sqlite3.connect(wal_build)
    assert conn.execute("PRAGMA journal_mode=WAL").fetchone() == ("wal",)
    conn.close()
    build = wal_build.read_bytes()
    assert build[18:20] == b"\x02\x02" and not Path(f"{wal_build}-wal").exists()
    res = env.cli_json("publish", str(wal_build))
    release = env.live.resolve()
    got = release.read_bytes()
    assert got[18:20] == b"\x01\x01"
    assert got[:18] + got[20:] == build[:18] + build[20:]
    assert res["sha256"] == hashlib.sha256(got).hexdigest()
    assert wal_build.read_bytes() == build  # the pwrite went to the clone only
    _assert_shares_extents(release, wal_build, skip_first_block=True)

    # a rollback-journal build: the release is the build, every extent shared
    plain = write_sample(xfs / "builds" / "plain.db", rows=6000, seed=2)
    res = env.cli_json("publish", str(plain))
    release = env.live.resolve()
    assert sha256(release) == sha256(plain) == res["sha256"]
    _assert_shares_extents(release, plain, skip_first_block=False)

    conn = sqlite3.connect(f"file:{env.live}?mode=ro", uri=True)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("delete",)
    finally:
        conn.close()


def _assert_shares_extents(release: Path, build: Path, *, skip_first_block: bool) -> None:
    """Every block of release past the first (patched) one is the build's block."""
    def blocks(path: Path) -> dict[int, tuple[int, bool]]:
        out = {}
        for logical, physical, length, flags in extents(path):
            for off in range(0, length, 4096):
                out[logical + off] = (physical + off, bool(flags & FIEMAP_EXTENT_SHARED))
        return out

    rel, src = blocks(release), blocks(build)
    size = release.stat().st_size
    assert size > 16 * 4096, "too small a build to tell"
    for off in range(4096 if skip_first_block else 0, size - size % 4096, 4096):
        assert rel[off] == src[off], f"block at {off} not shared: {rel[off]} vs {src[off]}"
        assert rel[off][1], f"block at {off} not flagged shared"
    if skip_first_block:
        assert rel[0][0] != src[0][0], "the patched first block must be the clone's own"
