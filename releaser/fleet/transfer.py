"""Moving release files: snapshot+hash a source, compress-upload, download-decompress.

Invariants: memory stays bounded (1 MiB reads, one upload part); a downloaded file is
written to a temporary name in the caller's folder, hashed while written, fsynced, and
only returned when its sha256 and size are the manifest's; on any failure the temporary
file is removed. Nothing downloaded is ever executed.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .bucket import READ_CHUNK, Bucket
from .errors import Refused

LEVEL = 10  # zstd level: ~the ratio of -19 on tag data at a fraction of the time


@dataclass(frozen=True)
class Snapshot:
    path: Path
    sha256: str
    size: int


def snapshot(source: Path, folder: Path) -> Snapshot:
    """Copy source into folder while hashing: gates, hash and upload all see one file."""
    digest = hashlib.sha256()
    size = 0
    fd, tmp = tempfile.mkstemp(prefix="push-", suffix=".db", dir=folder)
    with open(source, "rb") as src, os.fdopen(fd, "wb") as dst:
        while chunk := src.read(READ_CHUNK):
            digest.update(chunk)
            size += len(chunk)
            dst.write(chunk)
    return Snapshot(Path(tmp), digest.hexdigest(), size)


@dataclass
class Compressed:
    sha256: str = ""
    size: int = 0


def compress_chunks(path: Path, out: Compressed) -> Iterator[bytes]:
    """zstd frames of path's bytes; out gets the compressed sha256 and size at the end."""
    import zstandard

    digest = hashlib.sha256()
    compressor = zstandard.ZstdCompressor(level=LEVEL, write_content_size=True,
                                          write_checksum=True)
    with open(path, "rb") as src:
        for chunk in compressor.read_to_iter(src, read_size=READ_CHUNK,
                                             write_size=READ_CHUNK):
            digest.update(chunk)
            out.size += len(chunk)
            yield chunk
    out.sha256 = digest.hexdigest()


def upload(bucket: Bucket, name: str, path: Path) -> Compressed:
    out = Compressed()
    bucket.upload_stream(name, compress_chunks(path, out), content_type="application/zstd")
    return out


class _Decompressing:
    """A writable that decompresses into a file, hashing both streams."""

    def __init__(self, dst, max_size: int) -> None:  # noqa: ANN001
        import zstandard

        self._dctx = zstandard.ZstdDecompressor().decompressobj()
        self._dst = dst
        self.raw = hashlib.sha256()
        self.raw_size = 0
        self.max_size = max_size

    def write(self, data: bytes) -> int:
        import zstandard

        try:
            out = self._dctx.decompress(data)
        except zstandard.ZstdError as exc:
            raise Refused(f"release file is not valid zstd: {exc}") from None
        self.raw_size += len(out)
        if self.raw_size > self.max_size:
            raise Refused(f"release file decompresses to more than the {self.max_size} "
                          "bytes the manifest states")
        self.raw.update(out)
        self._dst.write(out)
        return len(data)


def download(bucket: Bucket, name: str, folder: Path, *, sha256: str, size: int,
             compressed_sha256: str, compressed_size: int,
             on_bytes: Callable[[int], None] | None = None) -> Path:
    """The verified, uncompressed release file in folder (a temporary name)."""
    fd, tmp = tempfile.mkstemp(prefix="download-", suffix=".db", dir=folder)
    path = Path(tmp)
    compressed = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as dst:
            sink = _Decompressing(dst, size)

            def chunk(data: bytes) -> None:
                compressed.update(data)
                if on_bytes is not None:
                    on_bytes(len(data))

            bucket.download(name, sink, max_bytes=compressed_size, on_chunk=chunk)  # type: ignore[arg-type]
            dst.flush()
            os.fsync(dst.fileno())
        if compressed.hexdigest() != compressed_sha256:
            raise Refused(f"{bucket.url(name)}: compressed sha256 {compressed.hexdigest()[:12]}"
                          f" is not the manifest's {compressed_sha256[:12]} (tampered?)")
        if sink.raw.hexdigest() != sha256 or sink.raw_size != size:
            raise Refused(f"{bucket.url(name)}: sha256 {sink.raw.hexdigest()[:12]} / "
                          f"{sink.raw_size} bytes is not the manifest's {sha256[:12]} / {size}")
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path
