"""Ed25519 signatures in the minisign format, so `minisign -V` verifies them by hand.

Formats (https://jedisct1.github.io/minisign/):
  public key:  "untrusted comment: ...\\n" + b64("Ed" + key_id[8] + pk[32])
  secret key:  "untrusted comment: ...\\n" + b64("Ed" + kdf "\\0\\0" + "B2" + salt[32]
               + opslimit[8] + memlimit[8] + key_id[8] + sk[64] + blake2b256(...)[32])
               (unencrypted, like `minisign -G -W`)
  signature:   "untrusted comment: ...\\n" + b64("ED" + key_id[8] + sig(blake2b512(msg)))
               + "\\ntrusted comment: T\\n" + b64(sig(sig_bytes + T))

Invariants: verify() accepts a signature only from a key in the trusted set (matched by
key id, then checked cryptographically), checks both the message signature and the
trusted-comment signature, and raises Refused otherwise. Only the prehashed "ED"
algorithm is produced; the legacy "Ed" is accepted on verify for keys made elsewhere.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError, Refused

_SIG_ALG = b"Ed"
_SIG_ALG_HASHED = b"ED"
_KDF_NONE = b"\0\0"
_CKSUM_ALG = b"B2"


def _b64decode(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise Refused(f"{what}: not base64") from None


def _lines(text: str, what: str) -> list[str]:
    lines = [ln for ln in text.replace("\r\n", "\n").split("\n") if ln != ""]
    if not lines or not lines[0].startswith("untrusted comment:"):
        raise Refused(f"{what}: not in minisign format (no 'untrusted comment:' line)")
    return lines


@dataclass(frozen=True)
class PublicKey:
    key_id: bytes  # 8 bytes
    raw: bytes  # 32 bytes
    source: str = ""

    @property
    def key_id_hex(self) -> str:
        # minisign prints the key id as the little-endian 64-bit number in hex
        return self.key_id[::-1].hex().upper()

    @classmethod
    def parse(cls, text: str, source: str = "public key") -> PublicKey:
        lines = _lines(text, source)
        if len(lines) < 2:
            raise Refused(f"{source}: no key line")
        blob = _b64decode(lines[1], source)
        if len(blob) != 42 or blob[:2] != _SIG_ALG:
            raise Refused(f"{source}: not a minisign Ed25519 public key")
        return cls(blob[2:10], blob[10:], source)

    @classmethod
    def load(cls, path: Path) -> PublicKey:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read public key: {exc.strerror}; "
                              "fix [fleet] public_keys") from None
        try:
            return cls.parse(text, str(path))
        except Refused as exc:
            raise ConfigError(f"{exc.message}; fix [fleet] public_keys") from None

    def text(self) -> str:
        blob = base64.b64encode(_SIG_ALG + self.key_id + self.raw).decode()
        return f"untrusted comment: minisign public key {self.key_id_hex}\n{blob}\n"


@dataclass(frozen=True)
class SecretKey:
    key_id: bytes
    seed: bytes  # the 32-byte Ed25519 seed (first half of minisign's 64-byte sk)
    public: PublicKey

    @classmethod
    def generate(cls) -> SecretKey:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        seed = os.urandom(32)
        key_id = os.urandom(8)
        pk = _public_raw(Ed25519PrivateKey.from_private_bytes(seed))
        return cls(key_id, seed, PublicKey(key_id, pk))

    @classmethod
    def parse(cls, text: str, source: str = "secret key") -> SecretKey:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        lines = _lines(text, source)
        if len(lines) < 2:
            raise ConfigError(f"{source}: no key line")
        try:
            blob = _b64decode(lines[1], source)
        except Refused as exc:
            raise ConfigError(exc.message) from None
        if len(blob) != 158 or blob[:2] != _SIG_ALG or blob[4:6] != _CKSUM_ALG:
            raise ConfigError(f"{source}: not a minisign Ed25519 secret key")
        if blob[2:4] != _KDF_NONE:
            raise ConfigError(f"{source}: the key is password-protected; make one with "
                              "`releaser fleet keygen` or `minisign -G -W`")
        key_id, sk, checksum = blob[54:62], blob[62:126], blob[126:158]
        # Debian's minisign 0.11 writes a zero checksum for unencrypted keys (-W); the
        # public-half check below catches damage either way
        if (checksum != bytes(32) and
                hashlib.blake2b(_SIG_ALG + key_id + sk, digest_size=32).digest() != checksum):
            raise ConfigError(f"{source}: checksum mismatch (damaged key file)")
        seed, pk = sk[:32], sk[32:]
        if _public_raw(Ed25519PrivateKey.from_private_bytes(seed)) != pk:
            raise ConfigError(f"{source}: public half does not match the secret half")
        return cls(key_id, seed, PublicKey(key_id, pk, source))

    @classmethod
    def load(cls, path: Path) -> SecretKey:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read signing key: {exc.strerror}; "
                              "fix [fleet] signing_key") from None
        return cls.parse(text, str(path))

    def text(self) -> str:
        sk = self.seed + self.public.raw
        checksum = hashlib.blake2b(_SIG_ALG + self.key_id + sk, digest_size=32).digest()
        blob = (_SIG_ALG + _KDF_NONE + _CKSUM_ALG + bytes(32) + bytes(8) + bytes(8)
                + self.key_id + sk + checksum)
        return ("untrusted comment: releaser fleet secret key (unencrypted)\n"
                + base64.b64encode(blob).decode() + "\n")

    def sign(self, message: bytes, trusted_comment: str) -> str:
        """A minisign signature file's text for message."""
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        if "\n" in trusted_comment or "\r" in trusted_comment:
            raise ValueError("trusted comment must be one line")
        key = Ed25519PrivateKey.from_private_bytes(self.seed)
        sig = key.sign(hashlib.blake2b(message, digest_size=64).digest())
        global_sig = key.sign(sig + trusted_comment.encode())
        return ("untrusted comment: signature from releaser fleet\n"
                + base64.b64encode(_SIG_ALG_HASHED + self.key_id + sig).decode() + "\n"
                + f"trusted comment: {trusted_comment}\n"
                + base64.b64encode(global_sig).decode() + "\n")


def _public_raw(key: object) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)  # type: ignore[attr-defined]


def verify(message: bytes, signature: str, trusted: list[PublicKey], what: str) -> str:
    """The trusted comment when `signature` is a valid signature of message by a trusted
    key; Refused (with the reason) otherwise."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    if not signature or not signature.strip():
        raise Refused(f"{what}: missing signature")
    lines = _lines(signature, f"{what} signature")
    if len(lines) != 4 or not lines[2].startswith("trusted comment: "):
        raise Refused(f"{what}: malformed signature (expected 4 lines)")
    blob = _b64decode(lines[1], f"{what} signature")
    if len(blob) != 74 or blob[:2] not in (_SIG_ALG, _SIG_ALG_HASHED):
        raise Refused(f"{what}: not an Ed25519 minisign signature")
    key_id, sig = blob[2:10], blob[10:]
    key = next((k for k in trusted if k.key_id == key_id), None)
    if key is None:
        raise Refused(f"{what}: signed by key {key_id[::-1].hex().upper()}, "
                      "which is not in [fleet] public_keys")
    digest = message if blob[:2] == _SIG_ALG else hashlib.blake2b(message,
                                                                   digest_size=64).digest()
    comment = lines[2][len("trusted comment: "):]
    global_sig = _b64decode(lines[3], f"{what} signature")
    public = Ed25519PublicKey.from_public_bytes(key.raw)
    try:
        public.verify(sig, digest)
    except InvalidSignature:
        raise Refused(f"{what}: bad signature (content changed after signing?)") from None
    try:
        public.verify(global_sig, sig + comment.encode())
    except InvalidSignature:
        raise Refused(f"{what}: bad signature on the trusted comment") from None
    return comment


def keygen(secret_path: Path, public_path: Path, *, force: bool = False) -> SecretKey:
    """Write a new key pair: secret 0600 created exclusively, public 0644."""
    key = SecretKey.generate()
    for path in (secret_path, public_path):
        if path.exists() and not force:
            raise ConfigError(f"{path}: exists; choose another path or pass --force")
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | (0 if force else os.O_EXCL)
    fd = os.open(secret_path, flags, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(key.text())
        fh.flush()
        os.fsync(fh.fileno())
    public_path.write_text(key.public.text())
    return key
