"""Delta transfer: a zstd long-range patch (`--patch-from`) from an earlier release.

Push side (make_deltas): for each of the last K distinct releases of the channel (the
pointer chain), fetch the base through the verified full download, run
`zstd --patch-from=BASE --long=W` on the new snapshot, and upload the patch create-only
at deltas/BASE-NEW.zst when it is smaller than half the full compressed file. The
signed manifest lists each kept patch (base sha256, key, sha256, size, window_log).

Agent side (fetch): a host holding the base (any slot or archive file whose recorded
sha256 is the base's) downloads the patch into the download folder while hashing,
checks its sha256 and size against the signed manifest BEFORE zstd reads it, rebuilds
the release through `zstd -d --patch-from` into a temporary file while hashing the
output, and returns it only when its sha256 and size are the manifest's. Any failure
(missing base, bad patch, zstd error, timeout) returns None: the caller falls back to
the full file. The base is never written (zstd only reads it).

Why the zstd CLI (Debian `zstd`, a local binary, never anything from the bucket) and not
python-zstandard: python-zstandard copies a raw-content dictionary into its own buffer
(measured: ZstdCompressionDict over an mmap of a 300 MB base -> RSS 584 MB), so a 1 GB
base would sit in memory twice; the CLI mmaps the base for --patch-from (file pages,
shared and reclaimable) and adds its window. Measured on a 991 MB base (1 % of rows
updated, --long=31): make 2.9 GB peak RSS, apply 1.9 GB (about 1 GB of it the mmapped
base); bench/fleet_bench.py prints these for the window the code now picks. Each zstd
run has a time limit proportional to the size.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .bucket import READ_CHUNK, Bucket
from .errors import BucketError, Conflict, Refused, ReleaserError

if TYPE_CHECKING:
    from ..config import Config
    from .manifest import Manifest
    from .sign import PublicKey

log = logging.getLogger("releaser.fleet.delta")

LEVEL = 3  # measured: -3 --long gives 0.26 % of raw for a 1 % update; higher levels gain little
MAX_WINDOW_LOG = 31  # zstd's limit on 64-bit; also caps decoder memory at 2 GiB
MIN_WINDOW_LOG = 20


@dataclass(frozen=True)
class Delta:
    base_sha256: str
    file: str
    sha256: str
    size: int
    window_log: int

    def as_dict(self) -> dict[str, Any]:
        return {"base_sha256": self.base_sha256, "file": self.file, "sha256": self.sha256,
                "size": self.size, "window_log": self.window_log}

    @classmethod
    def parse(cls, data: Any, target_sha256: str, what: str) -> Delta:
        from . import layout

        try:
            d = cls(**{k: data[k] for k in cls.__dataclass_fields__})
        except (TypeError, KeyError):
            raise Refused(f"{what}: malformed delta entry") from None
        ints = (d.size, d.window_log)
        if (any(not isinstance(v, int) or isinstance(v, bool) for v in ints)
                or not isinstance(d.sha256, str) or not isinstance(d.file, str)):
            raise Refused(f"{what}: delta entry fields of the wrong type")
        try:
            expected = layout.delta_file(d.base_sha256, target_sha256)
        except (ValueError, TypeError):
            raise Refused(f"{what}: delta base is not a sha256") from None
        if d.file != expected:
            raise Refused(f"{what}: delta file {d.file!r} is not where it belongs")
        if not MIN_WINDOW_LOG <= d.window_log <= MAX_WINDOW_LOG:
            raise Refused(f"{what}: delta window_log {d.window_log} out of range")
        return d


def zstd_binary() -> str | None:
    return shutil.which("zstd")


def window_log(*sizes: int) -> int:
    """The smallest window covering base and target (zstd needs it on both sides)."""
    need = max(1, *sizes)
    return max(MIN_WINDOW_LOG, min(MAX_WINDOW_LOG, math.ceil(math.log2(need))))


def _time_limit(size: int) -> float:
    return 120.0 + size / 5e6  # generous: 5 MB/s, on a shared 2-core machine


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
            wlog = window_log(base.size, new_size)
            argv = [binary, "-q", "-f", f"-{LEVEL}", f"--long={wlog}",
                    f"--patch-from={base_path}", str(new), "-o", str(patch)]
            proc = subprocess.run(argv, capture_output=True, text=True,
                                  timeout=_time_limit(new_size + base.size))
            if proc.returncode != 0:
                notes.append(f"no delta from {base.sha256[:12]}: zstd exit "
                             f"{proc.returncode}: {proc.stderr.strip()[-200:]}")
                continue
            size = patch.stat().st_size
            if size * 2 >= full_compressed_size:
                notes.append(f"no delta from {base.sha256[:12]}: {size} bytes is not under "
                             f"half the full file ({full_compressed_size})")
                continue
            digest = _sha256_file(patch)
            try:
                bucket.upload_stream(key, _chunks(patch), content_type="application/zstd")
            except Conflict:
                pass  # an earlier push made it; the manifest's hash decides below
            deltas.append(Delta(base.sha256, key, digest, size, wlog))
        except (ReleaserError, OSError, subprocess.TimeoutExpired) as exc:
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
        except (ReleaserError, OSError, subprocess.TimeoutExpired) as exc:
            log.warning("delta from %s failed (%s); downloading the full file",
                        d.base_sha256[:12], getattr(exc, "message", exc))
            return None
    return None


def _rebuild(binary: str, bucket: Bucket, d: Delta, base: Path, manifest: Manifest,
             folder: Path, on_bytes: Callable[[int], None] | None) -> Path:
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
        argv = [binary, "-q", "-d", "-c", f"--long={d.window_log}",
                f"--patch-from={base}", str(patch)]
        raw = hashlib.sha256()
        size = 0
        with os.fdopen(fd_out, "wb") as dst, subprocess.Popen(
                argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                stdin=subprocess.DEVNULL) as proc:
            assert proc.stdout is not None
            timer = threading.Timer(_time_limit(manifest.size), proc.kill)
            timer.start()
            while block := proc.stdout.read(READ_CHUNK):
                size += len(block)
                if size > manifest.size:
                    proc.kill()
                    raise Refused(f"{bucket.url(d.file)}: rebuilds to more than the "
                                  f"{manifest.size} bytes the manifest states")
                raw.update(block)
                dst.write(block)
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            code = proc.wait(timeout=_time_limit(manifest.size))
            timer.cancel()
            dst.flush()
            os.fsync(dst.fileno())
        if code != 0:
            raise Refused(f"zstd -d --patch-from exit {code}: {err.strip()[-200:]}")
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
