"""Signed documents: a JSON payload and its minisign signature in one object.

Object body: {"payload": "<the JSON text that was signed>", "minisig": "<signature file>"}.
To verify by hand: `jq -j .payload OBJ > p; jq -j .minisig OBJ > p.minisig;
minisign -V -p KEY.pub -m p`.

Invariants: open_signed() returns a payload only after the signature over its exact
bytes verified against a trusted key; the document's hash is the sha256 of those bytes
(what manifests and pointers refer to each other by). Never parse before verifying.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from .errors import Refused
from .sign import PublicKey, SecretKey, verify


@dataclass(frozen=True)
class Signed:
    payload: dict[str, Any]
    raw: bytes  # the signed payload bytes
    comment: str  # the trusted comment

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.raw).hexdigest()


def seal(payload: dict[str, Any], key: SecretKey, comment: str) -> tuple[bytes, str]:
    """(object body, payload digest)."""
    raw = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    body = json.dumps({"payload": raw.decode(), "minisig": key.sign(raw, comment)},
                      indent=1).encode() + b"\n"
    return body, hashlib.sha256(raw).hexdigest()


def open_signed(body: bytes, trusted: list[PublicKey], what: str, kind: str) -> Signed:
    """Verify then parse; Refused with the reason on anything wrong."""
    try:
        outer = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise Refused(f"{what}: not JSON") from None
    if not isinstance(outer, dict) or not isinstance(outer.get("payload"), str):
        raise Refused(f"{what}: no signed payload")
    sig = outer.get("minisig")
    if not isinstance(sig, str) or not sig.strip():
        raise Refused(f"{what}: missing signature")
    raw = outer["payload"].encode()
    comment = verify(raw, sig, trusted, what)
    try:
        payload = json.loads(raw)
    except ValueError:
        raise Refused(f"{what}: signed payload is not JSON") from None
    if not isinstance(payload, dict) or payload.get("kind") != kind:
        raise Refused(f"{what}: not a {kind} document")
    return Signed(payload, raw, comment)
