"""Delta transfer: segmented zstd long-range patches (`--patch-from`) from earlier releases.

Push side (make_deltas): for each of the last K distinct releases of the channel (the
pointer chain), fetch the base through the verified full download, make a segmented
patch of the new snapshot against it (segments.py: one `zstd --patch-from` frame per
64 MiB of the new file, against the same region of the base), and upload it create-only
at deltas/BASE-NEW.zst when it is smaller than half the full compressed file. The signed
manifest lists each kept patch: base sha256, key, sha256, size, and its segments (each
with the sha256 of the bytes it rebuilds).

Agent side (fetch): a host holding the base (any slot or archive file whose recorded
sha256 is the base's) downloads the patch into the download folder while hashing,
checks its sha256 and size against the signed manifest BEFORE zstd reads it, rebuilds
the release segment by segment into a temporary file (each segment checked against its
sha256 as it is written) and returns it only when the whole file's sha256 and size are
the manifest's. Any failure (missing base, bad patch, a plan over the memory bounds,
zstd error, timeout) returns None: the caller falls back to the full file. The base is
never written (it is only read).

Memory is bounded by segments.py's segment and region sizes, not by the file: measured on
the 968 MB bench rebuild, 269 MiB peak RSS making and 194 MiB applying, where one
whole-file `zstd --patch-from --long=31` took 2840 and 1850 MiB (bookworm's zstd 1.5.4
reads the whole base into memory and has no --mmap-dict; python-zstandard copies a
raw-content dictionary too: a 300 MB base gave 584 MB RSS). bench/fleet_bench.py prints
these figures beside their floor.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import segments
from .bucket import READ_CHUNK, Bucket
from .errors import BucketError, Conflict, Refused, ReleaserError

if TYPE_CHECKING:
    from ..config import Config
    from .manifest import Manifest
    from .sign import PublicKey

log = logging.getLogger("releaser.fleet.delta")


@dataclass(frozen=True)
class Delta:
    base_sha256: str
    file: str
    sha256: str
    size: int
    segments: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"base_sha256": self.base_sha256, "file": self.file, "sha256": self.sha256,
                "size": self.size, "segments": self.segments}

    @classmethod
    def parse(cls, data: Any, target_sha256: str, what: str) -> Delta:
        """The entry's fields and key; its segments are checked against the base held
        (segments.parse) when it is used."""
        from . import layout

        try:
            d = cls(**{k: data[k] for k in cls.__dataclass_fields__})
        except (TypeError, KeyError):
            raise Refused(f"{what}: malformed delta entry (an agent of this version "
                          "reads only segmented patches)") from None
        if (not isinstance(d.size, int) or isinstance(d.size, bool)
                or not isinstance(d.sha256, str) or not isinstance(d.file, str)
                or not isinstance(d.segments, list)):
            raise Refused(f"{what}: delta entry fields of the wrong type")
        try:
            expected = layout.delta_file(d.base_sha256, target_sha256)
        except (ValueError, TypeError):
            raise Refused(f"{what}: delta base is not a sha256") from None
        if d.file != expected:
            raise Refused(f"{what}: delta file {d.file!r} is not where it belongs")
        return d


def zstd_binary() -> str | None:
    return shutil.which("zstd")


# -- push side ---------------------------------------------------------------


def recent_bases(bucket: Bucket, channel: str, trusted: list[PublicKey], start: Any,
                 exclude: str, k: int) -> list[Manifest]:
    """Manifests of the last k distinct releases in the channel's pointer chain."""
    from . import channel as channels
    from . import layout
    from .envelope import open_signed
    from .manifest import KIND, Manifest

    out: list[Manifest] = []
    seen = {exclude}
    if k <= 0 or start.signed is None:
        return out
    for pointer, _digest in channels.history(bucket, channel, trusted, start, limit=50):
        if pointer.release_sha256 in seen:
            continue
        seen.add(pointer.release_sha256)
        name = layout.manifest(pointer.manifest)
        try:
            obj = bucket.get(name)
            signed = open_signed(obj.body, trusted, bucket.url(name), KIND)
            out.append(Manifest.from_signed(signed, pointer.manifest, bucket.url(name)))
        except ReleaserError as exc:
            log.warning("no delta from %s: %s", pointer.release_sha256[:12], exc.message)
        if len(out) >= k:
            break
    return out


def make_deltas(bucket: Bucket, new: Path, new_sha256: str, new_size: int,
                full_compressed_size: int, bases: list[Manifest], folder: Path
                ) -> tuple[list[Delta], list[str]]:
    """Upload the patches worth keeping; (deltas, notes on the ones skipped)."""
    from . import layout, transfer

    deltas: list[Delta] = []
    notes: list[str] = []
    binary = zstd_binary()
    if binary is None:
        return [], ["no delta: the zstd program is not installed (apt-get install zstd)"]
    for base in bases:
        key = layout.delta_file(base.sha256, new_sha256)
        base_path: Path | None = None
        patch = folder / f"delta-{base.sha256[:16]}.zst"
        try:
            base_path = transfer.download(
                bucket, base.file, folder, sha256=base.sha256, size=base.size,
                compressed_sha256=base.compressed_sha256,
                compressed_size=base.compressed_size)
            with open(patch, "wb") as fh:
                segs = segments.make(binary, base_path, new, fh, folder)
            size = patch.stat().st_size
            if size * 2 >= full_compressed_size:
                notes.append(f"no delta from {base.sha256[:12]}: {size} bytes is not under "
                             f"half the full file ({full_compressed_size})")
                continue
            digest = _sha256_file(patch)
            try:
                bucket.upload_stream(key, _chunks(patch), content_type="application/zstd")
            except Conflict:
                # an earlier push made it: the same bytes (zstd is deterministic) unless
                # another version of releaser or zstd wrote it; never list a mismatch
                if _object_sha256(bucket, key, size) != digest:
                    notes.append(f"no delta from {base.sha256[:12]}: {key} already holds "
                                 "other bytes (made by another releaser or zstd version)")
                    continue
            deltas.append(Delta(base.sha256, key, digest, size,
                                [s.as_dict() for s in segs]))
        except (ReleaserError, OSError, segments.SegmentError) as exc:
            notes.append(f"no delta from {base.sha256[:12]}: {getattr(exc, 'message', exc)}")
        finally:
            if base_path is not None:
                base_path.unlink(missing_ok=True)
            patch.unlink(missing_ok=True)
    return deltas, notes


def _chunks(path: Path):  # noqa: ANN202 - Iterator[bytes]
    with open(path, "rb") as fh:
        while chunk := fh.read(READ_CHUNK):
            yield chunk


def _object_sha256(bucket: Bucket, key: str, size: int) -> str | None:
    digest = hashlib.sha256()

    class _Sink:
        def write(self, data: bytes) -> int:
            digest.update(data)
            return len(data)

    try:
        got = bucket.download(key, _Sink(), max_bytes=size)  # type: ignore[arg-type]
    except BucketError:
        return None
    return digest.hexdigest() if got == size else None


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(READ_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


# -- agent side --------------------------------------------------------------


def held_file(config: Config, sha256: str) -> Path | None:
    """A release file in this host's store (slot or archive) recorded with sha256."""
    from ..session import file_of, open_store

    with open_store(config) as ctx:
        for rel in ctx.state.releases():
            if rel.sha256 == sha256:
                path = file_of(ctx.store, rel.id)
                if path is not None:
                    return path
    return None


def fetch(config: Config, bucket: Bucket, manifest: Manifest, folder: Path, *,
          on_bytes: Callable[[int], None] | None = None) -> Path | None:
    """The release rebuilt from a patch against a base this host holds, verified; None
    when no patch applies (the caller downloads the full file)."""
    binary = zstd_binary()
    if binary is None or not manifest.deltas:
        return None
    for entry in manifest.deltas:
        what = f"delta {entry.get('file') if isinstance(entry, dict) else '?'}"
        try:
            d = Delta.parse(entry, manifest.sha256, what)
        except Refused as exc:
            log.warning("%s; using the full file", exc.message)
            return None
        base = held_file(config, d.base_sha256)
        if base is None:
            continue
        try:
            return _rebuild(binary, bucket, d, base, manifest, folder, on_bytes)
        except (ReleaserError, OSError, segments.SegmentError) as exc:
            log.warning("delta from %s failed (%s); downloading the full file",
                        d.base_sha256[:12], getattr(exc, "message", exc))
            return None
    return None


def _rebuild(binary: str, bucket: Bucket, d: Delta, base: Path, manifest: Manifest,
             folder: Path, on_bytes: Callable[[int], None] | None) -> Path:
    try:
        segs = segments.parse(d.segments, manifest.size, d.size, base.stat().st_size)
    except ValueError as exc:
        raise Refused(f"{bucket.url(d.file)}: {exc}") from None
    fd, patch_tmp = tempfile.mkstemp(prefix="delta-", suffix=".zst", dir=folder)
    patch = Path(patch_tmp)
    fd_out, out_tmp = tempfile.mkstemp(prefix="download-", suffix=".db", dir=folder)
    out = Path(out_tmp)
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as fh:
            def chunk(data: bytes) -> None:
                digest.update(data)
                if on_bytes is not None:
                    on_bytes(len(data))

            bucket.download(d.file, fh, max_bytes=d.size, on_chunk=chunk)
        if digest.hexdigest() != d.sha256 or patch.stat().st_size != d.size:
            raise Refused(f"{bucket.url(d.file)}: sha256 {digest.hexdigest()[:12]} is not "
                          f"the manifest's {d.sha256[:12]} (tampered?)")
        # only verified bytes reach zstd; the base is read, never written
        raw = hashlib.sha256()
        with os.fdopen(fd_out, "wb") as dst:
            segments.apply(binary, base, patch, segs, dst, folder, on_data=raw.update,
                           # a segment done is progress: it keeps the agent's watchdog fed
                           on_segment=None if on_bytes is None else lambda: on_bytes(0))
            dst.flush()
            os.fsync(dst.fileno())
        size = out.stat().st_size
        if raw.hexdigest() != manifest.sha256 or size != manifest.size:
            raise Refused(f"{bucket.url(d.file)}: rebuilt sha256 {raw.hexdigest()[:12]} / "
                          f"{size} bytes is not the manifest's {manifest.sha256[:12]} / "
                          f"{manifest.size}")
    except BaseException:
        out.unlink(missing_ok=True)
        raise
    finally:
        patch.unlink(missing_ok=True)
    return out


__all__ = ["BucketError", "Delta", "fetch", "make_deltas", "recent_bases"]
