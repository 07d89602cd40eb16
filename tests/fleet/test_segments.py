"""The segmented patch engine (releaser/fleet/segments.py) with the real zstd program on
real SQLite rebuilds: many small segments rebuild the exact file; a base that is not the
one the patch was made from is caught at the segment it damages; a plan outside the
memory bounds or not tiling the file is refused before any zstd runs."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest

from releaser.fleet import segments
from tests.fleet.test_delta import updated_copy
from tests.sample import write_sample

pytestmark = pytest.mark.skipif(
    shutil.which("zstd") is None and os.environ.get("CI") != "true",
    reason="the zstd program is not installed (apt-get install zstd); .ci/run installs it")

SEG, MARGIN = 64 << 10, 16 << 10


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("segments")
    # both builds VACUUMed, as a batch rebuild writes them
    base = updated_copy(write_sample(tmp / "sample.db", rows=6000, seed=3),
                        tmp / "base.db", 1, 0)
    return base, updated_copy(base, tmp / "new.db", 1, 7)


def make(base: Path, new: Path, folder: Path) -> tuple[Path, list[segments.Segment]]:
    patch = folder / "patch.zst"
    with open(patch, "wb") as fh:
        segs = segments.make("zstd", base, new, fh, folder, segment=SEG, margin=MARGIN)
    return patch, segs


def test_many_segments_rebuild_the_exact_file(builds: tuple[Path, Path],
                                              tmp_path: Path) -> None:
    base, new = builds
    patch, segs = make(base, new, tmp_path)
    raw = new.read_bytes()
    assert len(segs) == -(-len(raw) // SEG) > 3
    # the plan tiles the new file and the patch, and each region lies inside the base
    assert [s.offset for s in segs] == list(range(0, len(raw), SEG))
    assert sum(s.patch_size for s in segs) == patch.stat().st_size
    for s in segs:
        assert s.sha256 == hashlib.sha256(raw[s.offset:s.offset + s.size]).hexdigest()
        assert s.base_size == s.size + 2 * MARGIN
        assert s.base_offset + s.base_size <= base.stat().st_size
    # 1 % of rows updated: the patch is a small fraction of the file
    assert patch.stat().st_size < len(raw) // 10
    parsed = segments.parse([s.as_dict() for s in segs], len(raw), patch.stat().st_size,
                            base.stat().st_size)
    assert parsed == segs
    out, whole = tmp_path / "out.db", hashlib.sha256()
    done: list[int] = []
    with open(out, "wb") as fh:
        segments.apply("zstd", base, patch, parsed, fh, tmp_path, on_data=whole.update,
                       on_segment=lambda: done.append(1))
    assert out.read_bytes() == raw and whole.hexdigest() == hashlib.sha256(raw).hexdigest()
    assert len(done) == len(segs)
    # no region or frame file left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.db", "patch.zst"]


def test_a_different_base_is_caught_at_the_segment_it_damages(
        builds: tuple[Path, Path], tmp_path: Path) -> None:
    base, new = builds
    patch, segs = make(base, new, tmp_path)
    damaged = tmp_path / "damaged.db"
    shutil.copyfile(base, damaged)
    victim = segs[2]
    with open(damaged, "r+b") as fh:  # 4 KiB in the middle of segment 2's region only
        fh.seek(victim.base_offset + victim.base_size // 2)
        page = fh.read(4096)
        fh.seek(victim.base_offset + victim.base_size // 2)
        fh.write(bytes(b ^ 0xFF for b in page))
    written: list[bytes] = []
    with open(tmp_path / "out.db", "wb") as fh, pytest.raises(segments.SegmentError) as err:
        segments.apply("zstd", damaged, patch, segs, fh, tmp_path, on_data=written.append)
    # segments before the damage came out whole; it stopped inside the damaged region
    assert sum(map(len, written)) <= victim.offset + victim.size
    assert sum(map(len, written)) >= victim.offset
    assert "segment at" in str(err.value)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("region-")]


@pytest.fixture(scope="module")
def made(builds: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
         ) -> tuple[Path, list[segments.Segment]]:
    return make(*builds, tmp_path_factory.mktemp("made"))


@pytest.mark.parametrize(("change", "message"), [
    (lambda e: e[1].update(offset=e[1]["offset"] + 1), "does not follow"),
    (lambda e: e[0].update(patch_size=e[0]["patch_size"] + 1), "does not follow"),
    (lambda e: e[0].update(size=segments.MAX_SEGMENT + 1), "larger than an agent accepts"),
    (lambda e: e[0].update(base_size=segments.MAX_REGION + 1), "larger than an agent"),
    (lambda e: e[0].update(base_offset=10**9), "past the end of the base"),
    (lambda e: e[0].update(window_log=31), "window_log 31 out of range"),
    (lambda e: e[0].update(size=True), "wrong type"),
    (lambda e: e[0].update(sha256="x"), "not a hex digest"),
    (lambda e: e[0].pop("sha256"), "malformed"),
    (lambda e: e.pop(), "cover"),
])
def test_plans_outside_the_bounds_are_refused(builds: tuple[Path, Path], made,  # noqa: ANN001
                                              change, message: str) -> None:  # noqa: ANN001
    base, new = builds
    patch, segs = made
    entries = [s.as_dict() for s in segs]
    segments.parse(entries, new.stat().st_size, patch.stat().st_size, base.stat().st_size)
    change(entries)
    with pytest.raises(ValueError, match=message):
        segments.parse(entries, new.stat().st_size, patch.stat().st_size,
                       base.stat().st_size)


def test_region_keeps_its_length_and_stays_inside_the_base() -> None:
    mib = 1 << 20
    # base shorter than a region: all of it
    assert segments.region(50 * mib, 60 * mib, 0, 60 * mib) == (0, 50 * mib)
    # same relative place, margin either side
    assert segments.region(1000 * mib, 1000 * mib, 500 * mib, 64 * mib) == (484 * mib, 96 * mib)
    # base 10 % larger: the region moves with the proportion
    assert segments.region(1100 * mib, 1000 * mib, 500 * mib, 64 * mib) == (534 * mib, 96 * mib)
    # at the ends it shifts inward, never shrinks
    assert segments.region(1000 * mib, 1000 * mib, 0, 64 * mib) == (0, 96 * mib)
    assert segments.region(1000 * mib, 1000 * mib, 990 * mib, 10 * mib) == (958 * mib, 42 * mib)
    plan = list(segments.plan(1000 * mib, 968 * mib))
    assert sum(p[1] for p in plan) == 968 * mib and all(p[1] <= segments.SEGMENT for p in plan)
    assert all(b + n <= 1000 * mib for _, _, b, n in plan)
