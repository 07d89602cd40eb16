"""`releaser fleet push`: gate a build locally, upload it, move the channel pointer.

Order (each step safe to repeat): read the channel pointer (the CAS base) -> snapshot
the build into a temporary file while hashing -> run the local gates on the snapshot
(same code as `releaser validate`) -> upload the compressed file create-only (skipped
when the bucket already has that sha256) -> upload zstd patches from the channel's last [fleet] delta_bases releases (delta.py)
-> write the signed manifest create-only ->
move the pointer by compare-and-swap, with a signed wave plan (waves.py) when --waves
or [fleet] waves asks for one. A gate failure uploads nothing; a lost CAS leaves
only unreferenced immutable objects.
"""

from __future__ import annotations

import socket
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import channel as channels
from . import layout, settings, transfer
from .envelope import seal
from .errors import Conflict, ReleaserError
from .manifest import Manifest
from .pointer import Pointer, _iso
from .status import acks
from .waves import Plan, assign

if TYPE_CHECKING:
    from ..config import Config


def push(config: Config, source: Path, *, channel: str | None, note: str | None,
         actor: str, waves: str | None = None, bake_s: float | None = None,
         canary: list[str] | None = None, max_failures: int | None = None,
         manual: bool = False) -> dict[str, Any]:
    from datetime import UTC, datetime

    from ..errors import GateFailed
    from ..preflight import check_source_path
    from ..views import validate

    fleet = settings.fleet_of(config)
    name = settings.channel_of(fleet, channel)
    key = settings.signing_key(fleet)
    trusted = [key.public, *_optional_trusted(fleet)]
    check_source_path(source)
    bucket = settings.open_bucket(fleet)
    start = channels.read(bucket, name, trusted)

    with tempfile.TemporaryDirectory(prefix="releaser-push-") as tmp:
        snap = transfer.snapshot(source, Path(tmp))
        report = validate(config, snap.path)
        if not report.passed():
            reasons = [r.reason() for r in report.blocking()]
            raise GateFailed(f"{source}: rejected by the local gates, nothing uploaded: "
                             f"{reasons[0]}", report={"reasons": reasons})
        file_key = layout.release_file(snap.sha256)
        uploaded = 0
        compressed = (_existing_compressed(bucket, snap.sha256)
                      if bucket.exists(file_key) else None)
        if compressed is None:
            try:
                compressed = transfer.upload(bucket, file_key, snap.path)
                uploaded = compressed.size
            except Conflict:
                compressed = _existing_compressed(bucket, snap.sha256)
                if compressed is None:
                    compressed = _compressed_of(snap.path)
        from . import delta

        bases = delta.recent_bases(bucket, name, trusted, start, snap.sha256,
                                   fleet.delta_bases)
        deltas, delta_notes = delta.make_deltas(bucket, snap.path, snap.sha256, snap.size,
                                                compressed.size, bases, Path(tmp))
    manifest = Manifest(
        sha256=snap.sha256, size=snap.size, file=file_key,
        compressed_sha256=compressed.sha256, compressed_size=compressed.size,
        compression="zstd", source=str(source.absolute()), note=note,
        builder=socket.gethostname(), created=_iso(datetime.now(UTC)),
        gates=[r.as_dict() for r in report.results],
        deltas=[d.as_dict() for d in deltas])
    body, manifest_digest = seal(manifest.payload(), key, manifest.comment())
    try:
        bucket.put_create(layout.manifest(manifest_digest), body)
    except Conflict:
        pass  # same signed bytes already there

    spec = fleet.waves if waves is None else waves
    use_waves = bool(spec or canary)
    hosts = ([str(a.get("host_id")) for a in acks(bucket, name)] if use_waves else [])

    def make(current: channels.Current) -> Pointer:
        plan = None
        if use_waves:
            seq = current.pointer.seq + 1 if current.pointer is not None else 1
            prev = current.pointer
            previous = ({"sha256": prev.release_sha256, "manifest": prev.manifest}
                        if prev is not None and prev.release_sha256 != snap.sha256 else None)
            plan = Plan(start_seq=seq, waves=assign(spec or "100%", hosts, canary or []),
                        bake_s=fleet.bake_s if bake_s is None else bake_s,
                        max_failures=max_failures or fleet.max_failures, manual=manual,
                        previous=previous).as_dict()
        return Pointer.next(current.signed, channel=name, manifest=manifest_digest,
                            release_sha256=snap.sha256, action="push", actor=actor,
                            note=note, ttl_s=fleet.pointer_ttl_s, plan=plan)

    pointer, digest = channels.move(bucket, name, key, trusted, start, make)
    return {"outcome": "pushed", "channel": name, "seq": pointer.seq,
            "pointer": digest, "manifest": manifest_digest, "sha256": snap.sha256,
            "size": snap.size, "compressed_size": compressed.size,
            "uploaded_bytes": uploaded, "expires": pointer.expires,
            "deltas": [d.as_dict() for d in deltas], "delta_notes": delta_notes,
            "previous": pointer.previous, "plan": pointer.plan,
            "warnings": [r.reason() for r in report.warnings()]}


def _optional_trusted(fleet: settings.Fleet) -> list:
    try:
        return settings.trusted_keys(fleet)
    except ReleaserError:
        return []


def _compressed_of(path: Path) -> transfer.Compressed:
    out = transfer.Compressed()
    for _ in transfer.compress_chunks(path, out):
        pass
    return out


def _existing_compressed(bucket, sha256: str) -> transfer.Compressed | None:  # noqa: ANN001
    """The compressed hash/size of a file already in the bucket (from its bytes)."""
    import hashlib

    digest = hashlib.sha256()
    size = 0

    class _Sink:
        def write(self, data: bytes) -> int:
            nonlocal size
            digest.update(data)
            size += len(data)
            return len(data)

    try:
        bucket.download(layout.release_file(sha256), _Sink(), max_bytes=1 << 50)
    except ReleaserError:
        return None
    return transfer.Compressed(digest.hexdigest(), size)
