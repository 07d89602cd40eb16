"""Segmented zstd patches: a delta whose memory is bounded whatever the file size.

A patch from BASE to NEW is a list of segments tiling NEW in order. Segment i covers
NEW[offset, offset+size) (size <= SEGMENT) and is one zstd frame made by
`zstd --long=W --patch-from=REGION`, where REGION is the slice of BASE at the same
relative position (offset * len(BASE) / len(NEW)) widened by MARGIN on each side, so
rows a rebuild moved a little still find their bytes. The frames are concatenated into
one patch object; the signed manifest lists each segment (NEW range, its sha256, BASE
range, frame range, window log).

Why: one `zstd --patch-from` over a whole 1 GB base holds the base and a 1 GB window
(measured: 2.95 GB peak making the patch, 1.94 GB applying it). Debian bookworm's zstd
1.5.4 has no --mmap-dict (1.5.5+), and even with it the decoder's window stays as large
as the file. Per segment a zstd process holds REGION + one segment's window: measured
on the 968 MB bench rebuild (64 MiB segments, 16 MiB margin; bench/fleet_bench.py):
269 MiB peak making, 194 MiB applying, where one whole-file patch took 2840 / 1850 MiB;
the patch is about as small (1 % of rows updated, stable ids: 0.63 % of raw vs 0.61 %
whole-file; 3.9 % with 0.5 % deleted + 0.5 % inserted). The cost: bytes that moved
farther than MARGIN between builds are not found (both builds are VACUUMed rebuilds in
the intended use, so rows stay near the same relative place).

Invariants:
- BASE is only read. zstd needs a regular file for --patch-from, so each REGION is copied
  into a temporary file in the caller's folder and removed after its segment.
- apply() feeds zstd only frames the caller has already verified (the whole patch's
  sha256 against the signed manifest); each rebuilt segment is checked against its own
  sha256 and size as it is produced, and it stops at the first mismatch.
- parse() refuses any plan whose segments, regions or windows exceed the bounds below,
  so a manifest cannot make an agent allocate more than about MAX_REGION + MAX_SEGMENT.
- Every zstd run has a time limit proportional to its size; a run over it is killed.
"""

from __future__ import annotations

import hashlib
import math
import os
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

READ_CHUNK = 1 << 20
LEVEL = 3  # measured: -3 --long gives 0.26-0.6 % of raw for a 1 % update; higher gains little
SEGMENT = 64 << 20
MARGIN = 16 << 20
MAX_SEGMENT = 256 << 20
MAX_REGION = MAX_SEGMENT + 2 * (64 << 20)
MIN_WINDOW_LOG = 20
MAX_WINDOW_LOG = 30  # covers MAX_REGION + MAX_SEGMENT; the decoder's memory limit


class SegmentError(Exception):
    """A segment could not be made or rebuilt (zstd failed, or bytes do not match)."""


@dataclass(frozen=True)
class Segment:
    offset: int  # in NEW
    size: int
    sha256: str  # of NEW[offset, offset+size)
    base_offset: int
    base_size: int
    patch_offset: int  # this segment's zstd frame within the patch object
    patch_size: int
    window_log: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def window_log(region: int, size: int) -> int:
    """Smallest window over region + segment (zstd --patch-from needs it on both sides)."""
    need = max(1, region + size)
    return max(MIN_WINDOW_LOG, min(MAX_WINDOW_LOG, math.ceil(math.log2(need))))


def region(base_size: int, new_size: int, offset: int, size: int,
           margin: int = MARGIN) -> tuple[int, int]:
    """(offset, size) of BASE used for NEW[offset, offset+size): same relative place,
    margin either side, shifted inward at the ends so it is always size + 2*margin long
    (or all of BASE when BASE is shorter)."""
    want = size + 2 * margin
    if base_size <= want:
        return 0, base_size
    centre = offset * base_size // max(1, new_size)
    lo = min(max(0, centre - margin), base_size - want)
    return lo, want


def plan(base_size: int, new_size: int, segment: int = SEGMENT,
         margin: int = MARGIN) -> Iterator[tuple[int, int, int, int]]:
    """(offset, size, base_offset, base_size) for each segment of NEW."""
    for offset in range(0, new_size, segment):
        size = min(segment, new_size - offset)
        yield (offset, size, *region(base_size, new_size, offset, size, margin))


def parse(entries: Any, new_size: int, patch_size: int, base_size: int) -> list[Segment]:
    """Segments from a (signed) manifest entry; ValueError naming what is wrong."""
    if not isinstance(entries, list):
        raise ValueError("segments is not a list")
    out: list[Segment] = []
    offset = patch_offset = 0
    for i, entry in enumerate(entries):
        try:
            s = Segment(**{k: entry[k] for k in Segment.__dataclass_fields__})
        except (TypeError, KeyError):
            raise ValueError(f"segment {i} is malformed") from None
        ints = [v for k, v in asdict(s).items() if k != "sha256"]
        if any(not isinstance(v, int) or isinstance(v, bool) or v < 0 for v in ints):
            raise ValueError(f"segment {i}: fields of the wrong type")
        if not isinstance(s.sha256, str) or len(s.sha256) != 64:
            raise ValueError(f"segment {i}: sha256 is not a hex digest")
        if s.offset != offset or s.patch_offset != patch_offset or s.size == 0:
            raise ValueError(f"segment {i} does not follow segment {i - 1}")
        if s.size > MAX_SEGMENT or s.base_size > MAX_REGION:
            raise ValueError(f"segment {i} is larger than an agent accepts "
                             f"({s.size} / {s.base_size} bytes)")
        if s.base_offset + s.base_size > base_size:
            raise ValueError(f"segment {i} reads past the end of the base")
        if not MIN_WINDOW_LOG <= s.window_log <= MAX_WINDOW_LOG:
            raise ValueError(f"segment {i}: window_log {s.window_log} out of range")
        offset += s.size
        patch_offset += s.patch_size
        out.append(s)
    if offset != new_size or patch_offset != patch_size:
        raise ValueError(f"segments cover {offset} of {new_size} bytes and {patch_offset} "
                         f"of the {patch_size}-byte patch")
    return out


def _time_limit(size: int) -> float:
    return 60.0 + size / 2e6  # generous: 2 MB/s on a shared 2-core machine


def _read_range(src: IO[bytes], offset: int, size: int, what: str) -> Iterator[bytes]:
    """size bytes of src from offset, READ_CHUNK at a time; a file that ends early is a
    SegmentError naming what."""
    src.seek(offset)
    left = size
    while left > 0:
        chunk = src.read(min(READ_CHUNK, left))
        if not chunk:
            raise SegmentError(f"{what} ended {left} bytes early")
        yield chunk
        left -= len(chunk)


def _region_file(base: IO[bytes], offset: int, size: int, folder: Path) -> Path:
    fd, tmp = tempfile.mkstemp(prefix="region-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as fh:
            for chunk in _read_range(base, offset, size, "file"):
                fh.write(chunk)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def _finish(proc: subprocess.Popen[bytes], err: IO[bytes], limit: float, what: str) -> None:
    try:
        code = proc.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise SegmentError(f"{what}: zstd took more than {limit:.0f} s") from None
    if code != 0:
        err.seek(0)
        msg = err.read().decode(errors="replace").strip()[-200:]
        raise SegmentError(f"{what}: zstd exit {code}: {msg}")


def make(binary: str, base: Path, new: Path, patch: IO[bytes], folder: Path, *,
         segment: int | None = None, margin: int | None = None) -> list[Segment]:
    """Append one zstd frame per segment of `new` to `patch` (a file opened for
    appending); returns the segments with the sha256 of each NEW slice. Sizes default
    to SEGMENT and MARGIN as they are when called."""
    segment = SEGMENT if segment is None else segment
    margin = MARGIN if margin is None else margin
    out: list[Segment] = []
    new_size = new.stat().st_size
    patch.flush()
    start = os.fstat(patch.fileno()).st_size
    written = 0  # bytes of frames appended so far
    with open(base, "rb") as bfh, open(new, "rb") as nfh:
        base_size = os.fstat(bfh.fileno()).st_size
        for offset, size, boff, bsize in plan(base_size, new_size, segment, margin):
            wlog = window_log(bsize, size)
            reg = _region_file(bfh, boff, bsize, folder)
            try:
                argv = [binary, "-q", f"-{LEVEL}", f"--long={wlog}", f"--patch-from={reg}",
                        f"--stream-size={size}", "-c", "-"]
                digest = hashlib.sha256()
                with tempfile.TemporaryFile() as err, subprocess.Popen(
                        argv, stdin=subprocess.PIPE, stdout=patch, stderr=err) as proc:
                    assert proc.stdin is not None
                    limit = _time_limit(size + bsize)
                    timer = threading.Timer(limit, proc.kill)  # a stuck zstd stops our writes
                    timer.start()
                    try:
                        for chunk in _read_range(nfh, offset, size, str(new)):
                            digest.update(chunk)
                            proc.stdin.write(chunk)
                        proc.stdin.close()
                    except BrokenPipeError:
                        pass  # zstd died: its exit code and stderr say why
                    finally:
                        timer.cancel()
                    _finish(proc, err, limit, f"segment at {offset}")
            finally:
                reg.unlink(missing_ok=True)
            end = os.fstat(patch.fileno()).st_size
            out.append(Segment(offset, size, digest.hexdigest(), boff, bsize,
                               written, end - start - written, wlog))
            written = end - start
    return out


def apply(binary: str, base: Path, patch: Path, segments: list[Segment], dst: IO[bytes],
          folder: Path, *, on_data: Callable[[bytes], None] | None = None,
          on_segment: Callable[[], None] | None = None) -> None:
    """Rebuild NEW into dst, segment by segment, from a verified patch file."""
    with open(base, "rb") as bfh, open(patch, "rb") as pfh:
        for s in segments:
            what = f"segment at {s.offset}"
            reg = _region_file(bfh, s.base_offset, s.base_size, folder)
            frame = _region_file(pfh, s.patch_offset, s.patch_size, folder)
            try:
                argv = [binary, "-q", "-d", "-c", f"--long={s.window_log}",
                        f"--patch-from={reg}", str(frame)]
                digest = hashlib.sha256()
                size = 0
                with tempfile.TemporaryFile() as err, subprocess.Popen(
                        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                        stderr=err) as proc:
                    assert proc.stdout is not None
                    limit = _time_limit(s.size + s.base_size)
                    timer = threading.Timer(limit, proc.kill)
                    timer.start()
                    try:
                        while block := proc.stdout.read(READ_CHUNK):
                            size += len(block)
                            if size > s.size:
                                proc.kill()
                                raise SegmentError(f"{what} rebuilds to more than its "
                                                   f"{s.size} bytes")
                            digest.update(block)
                            if on_data is not None:
                                on_data(block)
                            dst.write(block)
                        _finish(proc, err, limit, what)
                    finally:
                        timer.cancel()
            finally:
                reg.unlink(missing_ok=True)
                frame.unlink(missing_ok=True)
            if size != s.size or digest.hexdigest() != s.sha256:
                raise SegmentError(f"{what}: rebuilt {size} bytes with sha256 "
                                   f"{digest.hexdigest()[:12]}, the manifest says {s.size} "
                                   f"/ {s.sha256[:12]}")
            if on_segment is not None:
                on_segment()
