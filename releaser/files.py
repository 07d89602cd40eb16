"""File primitives the store is built from: durable links, renames and removals.

A new name for data is made under a temp name, renamed (or linked) into place, and
its folder fsynced, so a power loss leaves the old name or the new one, never half.
An OSError becomes a StoreIOError naming the file (disk full: what to free).
"""

from __future__ import annotations

import errno
import os
from contextlib import suppress
from pathlib import Path

from .errors import StoreIOError


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes) -> None:
    """All of data to fd: os.write may write less than it is given."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def write_new(path: Path, data: bytes, tmp_prefix: str, mode: int = 0o664) -> None:
    """data as path: a temp file (tmp_prefix + name, beside it) written whole, fsynced,
    renamed over path (the caller fsyncs the folder). mode whatever the umask."""
    tmp = path.with_name(f"{tmp_prefix}{path.name}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def link_atomically(src: Path, tmp: Path, dest: Path) -> None:
    """A new name for an existing file: link under a temp name, rename, fsync the folder."""
    try:
        os.link(src, tmp)
        os.replace(tmp, dest)
        fsync_dir(dest.parent)
    except OSError as exc:
        remove_quietly(tmp)
        raise io_error(dest, exc) from None


def io_error(path: Path, exc: OSError) -> StoreIOError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return StoreIOError(f"{path}: no space left while writing ({exc.strerror}); free space "
                            "under the store root and publish again")
    return StoreIOError(f"{path}: {exc.strerror or exc}")


def remove_quietly(*paths: Path) -> None:
    for p in paths:
        with suppress(OSError):
            os.unlink(p)
