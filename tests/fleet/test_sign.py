"""minisign-format signatures: Debian's `minisign -V` verifies ours by hand and we
verify what `minisign` signs; wrong key, changed message or comment are refused."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from releaser.fleet.errors import Refused
from releaser.fleet.sign import PublicKey, SecretKey, keygen, verify

MINISIGN = shutil.which("minisign")
needs_minisign = pytest.mark.skipif(
    MINISIGN is None and os.environ.get("CI") != "true",
    reason="minisign not installed (apt-get install minisign; .ci/run does)")


def test_sign_verify_and_refusals(tmp_path: Path) -> None:
    key = keygen(tmp_path / "k.key", tmp_path / "k.pub")
    assert (tmp_path / "k.key").stat().st_mode & 0o777 == 0o600
    pub = PublicKey.load(tmp_path / "k.pub")
    assert SecretKey.load(tmp_path / "k.key").public.raw == pub.raw
    sig = key.sign(b"payload", "seq=1")
    assert verify(b"payload", sig, [pub], "doc") == "seq=1"
    with pytest.raises(Refused, match="bad signature"):
        verify(b"payload!", sig, [pub], "doc")
    lines = sig.splitlines()
    lines[2] = "trusted comment: seq=9"
    with pytest.raises(Refused, match="trusted comment"):
        verify(b"payload", "\n".join(lines) + "\n", [pub], "doc")
    other = keygen(tmp_path / "o.key", tmp_path / "o.pub")
    with pytest.raises(Refused, match="not in"):
        verify(b"payload", sig, [other.public], "doc")
    with pytest.raises(Refused, match="missing signature"):
        verify(b"payload", "", [pub], "doc")


@needs_minisign
def test_minisign_tool_verifies_ours_and_we_verify_its(tmp_path: Path) -> None:
    key = keygen(tmp_path / "k.key", tmp_path / "k.pub")
    (tmp_path / "m").write_bytes(b'{"seq":1}')
    (tmp_path / "m.minisig").write_text(key.sign(b'{"seq":1}', "releaser pointer seq=1"))
    out = subprocess.run([str(MINISIGN), "-V", "-p", str(tmp_path / "k.pub"), "-m",
                          str(tmp_path / "m")], capture_output=True, text=True, check=True)
    assert "releaser pointer seq=1" in out.stdout
    (tmp_path / "m").write_bytes(b'{"seq":2}')
    bad = subprocess.run([str(MINISIGN), "-V", "-p", str(tmp_path / "k.pub"), "-m",
                          str(tmp_path / "m")], capture_output=True, text=True)
    assert bad.returncode != 0

    subprocess.run([str(MINISIGN), "-G", "-W", "-p", str(tmp_path / "t.pub"), "-s",
                    str(tmp_path / "t.key")], check=True, capture_output=True)
    (tmp_path / "f").write_bytes(b"data")
    subprocess.run([str(MINISIGN), "-S", "-s", str(tmp_path / "t.key"), "-m",
                    str(tmp_path / "f"), "-t", "by minisign"], check=True,
                   capture_output=True)
    theirs = PublicKey.load(tmp_path / "t.pub")
    assert verify(b"data", (tmp_path / "f.minisig").read_text(), [theirs], "f") == "by minisign"
    # and their secret key signs through releaser
    sk = SecretKey.load(tmp_path / "t.key")
    (tmp_path / "g").write_bytes(b"x")
    (tmp_path / "g.minisig").write_text(sk.sign(b"x", "ours with their key"))
    subprocess.run([str(MINISIGN), "-V", "-p", str(tmp_path / "t.pub"), "-m",
                    str(tmp_path / "g")], check=True, capture_output=True)
