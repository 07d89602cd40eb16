"""Fleet benchmark, the delta half (issue 15): run by bench/fleet_bench.py.

Part A: on the bench's large database, rebuilt (VACUUM INTO), a 1 %-updated rebuild and
a 0.5 %-deleted + 0.5 %-inserted one: the segmented patch exactly as `fleet push` makes
it and an agent applies it (releaser/fleet/segments.py), each side in a child process
(`python bench/fleet_delta.py --child make|apply|floor ...`) under /usr/bin/time, whose
peak RSS is the largest of the Python process and its zstd children.
Part C: one real `releaser agent --once` taking the large build as a delta.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench import OUT, candidate  # noqa: E402
from releaser.fleet import delta, transfer  # noqa: E402


def _cached(dst: Path, what: str, make: Callable[[Path], None]) -> Path:
    """dst, made once (make(tmp), then renamed into place) and reused by later runs."""
    if not dst.exists():
        print(f"making {dst.name} ({what})...", flush=True)
        tmp = dst.with_suffix(".tmp")
        tmp.unlink(missing_ok=True)
        make(tmp)
        os.replace(tmp, dst)
    return dst


def _edited(src: Path, dst: Path, what: str, *sql: str) -> Path:
    """A copy of src with sql run on it, then VACUUMed as a rebuild would pack it."""
    def make(tmp: Path) -> None:
        shutil.copyfile(src, tmp)
        conn = sqlite3.connect(tmp)
        for statement in sql:
            conn.execute(statement)
        conn.commit()
        conn.execute("VACUUM")
        conn.close()

    return _cached(dst, what, make)


def rebuilt(src: Path) -> Path:
    """src as a rebuild writes it (VACUUM INTO: packed, in rowid order), cached."""
    def make(tmp: Path) -> None:
        conn = sqlite3.connect(src)
        conn.execute("VACUUM INTO ?", (str(tmp),))
        conn.close()

    return _cached(src.with_name(src.stem + "-rebuilt.db"), "VACUUM INTO", make)


def updated(src: Path, pct: float = 1.0) -> Path:
    return _edited(src, src.with_name(src.stem + f"-upd{pct:g}.db"),
                   f"{pct:g} % of rows updated, ids stable",
                   "UPDATE tags_final SET post_count = post_count + 7 "
                   f"WHERE id % {int(100 / pct)} = 0")


def churned(src: Path) -> Path:
    """src with 0.5 % of rows deleted and 0.5 % inserted (ids of the rest stable)."""
    return _edited(src, src.with_name(src.stem + "-churn.db"),
                   "0.5 % deleted, 0.5 % inserted",
                   "DELETE FROM tags_final WHERE id % 200 = 1",
                   "INSERT INTO tags_final(name, main_category, sub_category, "
                   "classification_source, classification_confidence, post_count) "
                   "SELECT name || '_new', main_category, sub_category, "
                   "classification_source, classification_confidence, post_count + 1 "
                   "FROM tags_final WHERE id % 200 = 2")


def load() -> str:
    return os.getloadavg().__repr__()


def timed_child(argv: list[str], stdout: Path | None = None) -> tuple[float, int]:
    """Wall seconds and peak RSS (KiB) of argv's process tree's largest process
    (/usr/bin/time: GNU time's wait4 reports the max over the child and its children)."""
    with tempfile.NamedTemporaryFile(prefix="time-", dir=OUT) as rss:
        t0 = time.perf_counter()
        out = open(stdout, "wb") if stdout else subprocess.DEVNULL  # noqa: SIM115
        try:
            proc = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", rss.name, *argv],
                                  stdout=out, stderr=subprocess.PIPE)
        finally:
            if stdout:
                out.close()  # type: ignore[union-attr]
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(f"{argv[:4]}: {proc.stderr.decode()[-800:]}")
        return wall, int(Path(rss.name).read_text().split()[-1])


def child_main(args: list[str]) -> int:
    """`--child make|apply|floor ...`: one side of the delta, as push/agent run it."""
    from releaser.fleet import segments

    zstd = delta.zstd_binary()
    assert zstd, "apt-get install zstd"
    what = args[0]
    if what == "floor":
        return 0
    if what == "make":
        base, new, patch, plan = map(Path, args[1:5])
        with open(patch, "wb") as fh:
            segs = segments.make(zstd, base, new, fh, patch.parent)
        plan.write_text(json.dumps([x.as_dict() for x in segs]))
        return 0
    base, patch, plan, out, size = Path(args[1]), Path(args[2]), Path(args[3]), \
        Path(args[4]), int(args[5])
    segs = segments.parse(json.loads(plan.read_text()), size, patch.stat().st_size,
                          base.stat().st_size)
    with open(out, "wb") as fh:
        segments.apply(zstd, base, patch, segs, fh, out.parent)
    return 0


def part_a(rows: int, whole: bool) -> dict[str, object]:
    from releaser.fleet import segments

    base = rebuilt(candidate(rows, 1))
    new = updated(base)
    raw = new.stat().st_size
    me = [sys.executable, str(Path(__file__).resolve()), "--child"]
    res: dict[str, object] = {"rows": rows, "raw": raw, "base": base.stat().st_size,
                              "segment": segments.SEGMENT, "margin": segments.MARGIN,
                              "load_before": load()}
    with tempfile.TemporaryDirectory(dir=OUT) as tmp:
        patch, plan, out = Path(tmp) / "p.zst", Path(tmp) / "plan.json", Path(tmp) / "o.db"
        res["floor_s"], res["floor_rss_kib"] = timed_child(me + ["floor"])
        res["make_s"], res["make_rss_kib"] = timed_child(
            me + ["make", str(base), str(new), str(patch), str(plan)])
        res["apply_s"], res["apply_rss_kib"] = timed_child(
            me + ["apply", str(base), str(patch), str(plan), str(out), str(raw)])
        res["segments"] = len(json.loads(plan.read_text()))
        res["rebuilt_identical"] = (transfer.snapshot(out, Path(tmp)).sha256
                                    == transfer.snapshot(new, Path(tmp)).sha256)
        res["delta"] = patch.stat().st_size
        churn = churned(base)
        res["churn_raw"] = churn.stat().st_size
        res["churn_make_s"], res["churn_make_rss_kib"] = timed_child(
            me + ["make", str(base), str(churn), str(patch), str(plan)])
        res["churn_delta"] = patch.stat().st_size
        if whole:  # what one whole-file patch needs (the approach segments replaced)
            zstd = delta.zstd_binary()
            res["whole_make_s"], res["whole_make_rss_kib"] = timed_child(
                [zstd, "-q", "-f", "-3", "--long=31", f"--patch-from={base}", str(new),
                 "-o", str(patch)])
            res["whole_apply_s"], res["whole_apply_rss_kib"] = timed_child(
                [zstd, "-q", "-d", "-c", "--long=31", f"--patch-from={base}", str(patch)],
                stdout=out)
            res["whole_delta"] = patch.stat().st_size
    full = transfer.Compressed()
    t0 = time.perf_counter()
    for _ in transfer.compress_chunks(new, full):
        pass
    res["full"], res["full_s"] = full.size, time.perf_counter() - t0
    res["load_after"] = load()
    return res


def print_a(a: dict[str, object]) -> bool:
    mib = 1 << 20
    raw, base = int(a["raw"]), int(a["base"])  # type: ignore[call-overload]
    pct = 100 * int(a["delta"]) / raw  # type: ignore[call-overload]
    print(f"\n== delta transfer, {a['rows']} rows, 1 % of rows updated, ids stable "
          f"(load {a['load_before']}) ==")
    print(f"bytes an agent downloads: delta {int(a['delta']) / 1e6:.2f} MB = {pct:.2f} % of "  # type: ignore[call-overload]
          f"raw   full compressed {int(a['full']) / 1e6:.1f} MB "  # type: ignore[call-overload]
          f"({100 * int(a['full']) / raw:.1f} %)   raw {raw / 1e6:.1f} MB   "  # type: ignore[call-overload]
          f"target delta <= 5 % of raw   {'OK' if pct <= 5 else 'MISSED'}")
    floor = int(a["floor_rss_kib"]) * 1024  # type: ignore[call-overload]
    ok_mem = True
    for side in ("make", "apply"):
        rss = int(a[f"{side}_rss_kib"]) * 1024  # type: ignore[call-overload]
        ok = rss < base
        ok_mem = ok_mem and ok
        print(f"peak RSS {side:5s} {rss / mib:6.0f} MiB  ({float(a[f'{side}_s']):5.1f} s)   "  # type: ignore[arg-type]
              f"floor (python + module, no zstd) {floor / mib:.0f} MiB   base {base / mib:.0f} "
              f"MiB   target < base   {'OK' if ok else 'MISSED'}")
    print(f"  {a['segments']} segments of {int(a['segment']) // mib} MiB, regions +-"  # type: ignore[call-overload]
          f"{int(a['margin']) // mib} MiB; rebuilt identical: {a['rebuilt_identical']}")  # type: ignore[call-overload]
    print(f"  0.5 % of rows deleted + 0.5 % inserted instead: delta "
          f"{100 * int(a['churn_delta']) / int(a['churn_raw']):.2f} % of raw, peak RSS making "  # type: ignore[call-overload]
          f"{int(a['churn_make_rss_kib']) / 1024:.0f} MiB")  # type: ignore[call-overload]
    if "whole_delta" in a:
        print(f"  whole-file zstd --patch-from --long=31 for comparison: delta "
              f"{100 * int(a['whole_delta']) / raw:.2f} % of raw, peak RSS make "  # type: ignore[call-overload]
              f"{int(a['whole_make_rss_kib']) / 1024:.0f} MiB ({a['whole_make_s']:.1f} s), "  # type: ignore[call-overload]
              f"apply {int(a['whole_apply_rss_kib']) / 1024:.0f} MiB "  # type: ignore[call-overload]
              f"({a['whole_apply_s']:.1f} s)")
    return pct <= 5 and ok_mem and bool(a["rebuilt_identical"])


@contextmanager
def weed_fleet(prefix: str, name: str) -> Iterator[tuple[Any, Any]]:
    """A local SeaweedFS and a test Fleet on s3://releases/NAME, in a new folder under
    OUT (prefix); the agents, the server and the folder are gone afterwards."""
    from releaser.fleet.bucket import Bucket
    from tests.fleet.fleetenv import Fleet
    from tests.s3server import CREDENTIALS, WeedServer

    for k, v in CREDENTIALS.items():
        os.environ.setdefault(k, v)
    work = Path(tempfile.mkdtemp(prefix=prefix, dir=OUT))
    server = WeedServer(work / "weed")
    server.start()
    fleet = None
    try:
        url = f"s3://releases/{name}"
        fleet = Fleet(tmp=work, url=url, endpoint=server.endpoint_url,
                      bucket=Bucket(url, endpoint_url=server.endpoint_url,
                                    region="us-east-1"),
                      key=work / "fleet.key", pub=work / "fleet.pub")
        yield fleet, server
    finally:
        if fleet is not None:
            fleet.stop_all()
        server.stop(graceful=False)
        shutil.rmtree(work, ignore_errors=True)


def part_c(rows: int) -> dict[str, object]:
    """One real `releaser agent --once` taking the 1 %-updated large build as a delta:
    peak RSS of the whole agent (download, rebuild, the publish gates), bytes."""
    from tests.conftest import RELEASER_BIN

    with weed_fleet("fleet-large-", "large") as (fleet, _server):
        host = fleet.host("big0", poll_s=1.0)
        for cfg in (host.config, fleet.build.config):  # gate queries on 1 GB take seconds
            text = cfg.read_text()
            cfg.write_text(text.replace("query_timeout_ms = 5000", "query_timeout_ms = 60000"))
        base = rebuilt(candidate(rows, 1))
        new = updated(base)
        once = [str(RELEASER_BIN), "--config", str(host.config), "agent", "--once"]
        fleet.push(base, note="base")
        full_s, full_rss = timed_child(once)
        full_bytes = fleet.acks()["big0"]["bytes_downloaded"]
        t0 = time.perf_counter()
        second = fleet.push(new, note="1 % updated")
        push_s = time.perf_counter() - t0
        delta_s, delta_rss = timed_child(once)
        ack = fleet.acks()["big0"]
        assert ack["applied_sha256"] == second["sha256"], ack
        return {"rows": rows, "raw": new.stat().st_size, "push_s": push_s,
                "full_bytes": full_bytes, "full_s": full_s, "full_rss_kib": full_rss,
                "delta_bytes": ack["bytes_downloaded"], "delta_s": delta_s,
                "delta_rss_kib": delta_rss, "load": load()}


def print_c(c: dict[str, object]) -> bool:
    raw = int(c["raw"])  # type: ignore[call-overload]
    ok = int(c["delta_rss_kib"]) * 1024 < raw  # type: ignore[call-overload]
    print(f"\n== one real agent, {c['rows']} rows ({raw / 1e6:.0f} MB), load {c['load']} ==")
    print(f"agent --once taking the delta: {int(c['delta_bytes']) / 1e6:.2f} MB downloaded "  # type: ignore[call-overload]
          f"({100 * int(c['delta_bytes']) / raw:.2f} % of raw), {c['delta_s']:.1f} s, "  # type: ignore[call-overload]
          f"peak RSS {int(c['delta_rss_kib']) / 1024:.0f} MiB   target < the file   "  # type: ignore[call-overload]
          f"{'OK' if ok else 'MISSED'}")
    print(f"  the first (full) download: {int(c['full_bytes']) / 1e6:.1f} MB, "  # type: ignore[call-overload]
          f"{c['full_s']:.1f} s, peak RSS {int(c['full_rss_kib']) / 1024:.0f} MiB; "  # type: ignore[call-overload]
          f"the push making the delta: {c['push_s']:.1f} s")
    return ok


if __name__ == "__main__" and sys.argv[1:2] == ["--child"]:
    sys.exit(child_main(sys.argv[2:]))
