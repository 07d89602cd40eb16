"""The manifest of one pushed release: what the file is and how it was judged.

Fields (signed): sha256 and size of the uncompressed database, the compressed object's
key, sha256 and size, the gate report from the build host, source path, note, builder
host, created time, and the deltas (patches from earlier releases: base sha256, key,
sha256, size, segments; see delta.py and segments.py). Written create-only at manifests/HASH.json.

Invariant: from_signed() returns a Manifest only for a verified payload whose digest is
the one the pointer names and whose fields have the right types.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from . import layout
from .envelope import Signed
from .errors import Refused

KIND = "releaser-manifest"


@dataclass(frozen=True)
class Manifest:
    sha256: str
    size: int
    file: str
    compressed_sha256: str
    compressed_size: int
    compression: str
    source: str
    note: str | None
    builder: str
    created: str
    gates: list[dict[str, Any]] = field(default_factory=list)
    # patches from earlier releases (releaser/fleet/delta.py); checked when used
    deltas: list[dict[str, Any]] = field(default_factory=list)

    def payload(self) -> dict[str, Any]:
        return {"kind": KIND, "version": 1, **asdict(self)}

    def comment(self) -> str:
        return f"releaser manifest sha256={self.sha256} size={self.size}"

    @classmethod
    def from_signed(cls, signed: Signed, expect_digest: str, what: str) -> Manifest:
        if signed.digest != expect_digest:
            raise Refused(f"{what}: hash {signed.digest[:12]} is not the {expect_digest[:12]} "
                          "the pointer names")
        p = signed.payload
        try:
            m = cls(**{k: p[k] for k in cls.__dataclass_fields__ if k in p})
        except TypeError as exc:
            raise Refused(f"{what}: missing fields ({exc})") from None
        checks = [(m.sha256, str), (m.size, int), (m.file, str), (m.compressed_size, int),
                  (m.compressed_sha256, str), (m.compression, str)]
        if any(not isinstance(v, t) or isinstance(v, bool) for v, t in checks):
            raise Refused(f"{what}: fields of the wrong type")
        try:
            if m.file != layout.release_file(m.sha256):
                raise Refused(f"{what}: file {m.file!r} is not where sha256 {m.sha256[:12]} "
                              "belongs")
        except ValueError:
            raise Refused(f"{what}: sha256 is not a hex digest") from None
        if not isinstance(m.deltas, list):
            raise Refused(f"{what}: deltas is not a list")
        if m.compression != "zstd":
            raise Refused(f"{what}: unknown compression {m.compression!r}")
        return m
