"""The systemd units: systemd-analyze verify and security, the settings the issue asks
for, and `make install-systemd` into a staging tree."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from .conftest import DEFAULT_CONFIG, REPO

UNITS = sorted((REPO / "systemd").glob("*.service"))
MONITOR_UNIT = REPO / "systemd" / "releaser-monitor.service"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
# under CI=true a missing systemd-analyze fails the test instead of skipping it
needs_analyze = pytest.mark.skipif(SYSTEMD_ANALYZE is None and os.environ.get("CI") != "true",
                                   reason="systemd-analyze not on PATH (Debian package systemd)")


def settings(unit: Path) -> dict[str, list[str]]:
    """key -> values (a key may repeat) for every `Key=value` line."""
    out: dict[str, list[str]] = {}
    for line in unit.read_text().splitlines():
        m = re.match(r"^([A-Za-z]+)=(.*)$", line.strip())
        if m:
            out.setdefault(m.group(1), []).append(m.group(2))
    return out


def with_stand_in(unit: Path, tmp: Path) -> Path:
    """A copy of the unit whose ExecStart binary exists here (the real one lives in /opt)."""
    stand_in = tmp / "releaser-stand-in"
    stand_in.write_text("#!/bin/sh\nexit 0\n")
    stand_in.chmod(0o755)
    text = re.sub(r"(?m)^(ExecStart=[-@:+!]*)(\S+)", lambda m: m.group(1) + str(stand_in),
                  unit.read_text())
    copy = tmp / unit.name
    copy.write_text(text)
    return copy


def test_units_exist() -> None:
    assert MONITOR_UNIT in UNITS


@needs_analyze
@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_systemd_analyze_verify(unit: Path, tmp_path: Path) -> None:
    copy = with_stand_in(unit, tmp_path)
    proc = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", "--recursive-errors=yes", "--man=no", str(copy)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # warnings about this unit are printed with its name even when the exit code is 0
    assert unit.name not in proc.stderr, proc.stderr


@needs_analyze
@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_systemd_analyze_security_below_2(unit: Path, tmp_path: Path) -> None:
    copy = with_stand_in(unit, tmp_path)
    proc = subprocess.run(
        [SYSTEMD_ANALYZE, "security", "--offline=true", "--no-pager", str(copy)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path)
    if "offline" in proc.stderr and "unrecognized" in proc.stderr:
        pytest.skip("systemd-analyze security --offline needs systemd >= 250")
    m = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", proc.stdout)
    assert m, proc.stdout + proc.stderr
    assert float(m.group(1)) < 2.0, proc.stdout


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_a_config_error_is_not_restarted_forever(unit: Path) -> None:
    """Exit 2 (usage/config) is not restarted; other failures only 5 times in 10 min."""
    one = {k: v[-1] for k, v in settings(unit).items()}
    assert one["Restart"] == "on-failure"
    assert "2" in one.get("RestartPreventExitStatus", "").split(), unit.name
    burst, interval = int(one["StartLimitBurst"]), int(one["StartLimitIntervalSec"])
    assert burst * int(one["RestartSec"]) < interval, "the start limit can never trigger"


def test_monitor_unit_settings() -> None:
    s = settings(MONITOR_UNIT)
    one = {k: v[-1] for k, v in s.items()}
    assert one["Type"] == "notify"
    assert one["ExecStart"].split()[-1] == "monitor"
    assert one["Restart"] == "on-failure" and "RestartSec" in one
    assert "StartLimitIntervalSec" in one and "StartLimitBurst" in one
    assert one["User"] == "releaser"
    assert int(one["WatchdogSec"]) > 0 and int(one["TimeoutStopSec"]) > 0
    assert one["ProtectSystem"] == "strict"
    for key in ("ProtectHome", "NoNewPrivileges", "PrivateTmp"):
        assert one[key] == "yes", key
    assert one["StateDirectory"] == "releaser"


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_units_can_write_where_the_default_config_keeps_releases(unit: Path) -> None:
    """ProtectSystem=strict: the root and the live symlink's folder must be writable."""
    config = tomllib.loads(DEFAULT_CONFIG.read_text())
    # "-" prefix: a missing folder does not fail the start
    writable = [p.lstrip("-") for p in " ".join(settings(unit).get("ReadWritePaths", [])).split()]
    assert config["root"] in writable
    assert str(Path(config["live_path"]).parent) in writable


def test_make_install_systemd_into_a_staging_tree(tmp_path: Path) -> None:
    if shutil.which("make") is None and os.environ.get("CI") != "true":
        pytest.skip("make not on PATH")
    dest = tmp_path / "dest"
    run = ["make", "-s", "-C", str(REPO), "install-systemd", f"DESTDIR={dest}"]
    proc = subprocess.run(run, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for unit in UNITS:
        installed = dest / "etc" / "systemd" / "system" / unit.name
        assert installed.read_text() == unit.read_text()
    conf = dest / "etc" / "releaser" / "releaser.toml"
    assert conf.read_text() == DEFAULT_CONFIG.read_text()
    # an existing config is the operator's: never overwritten
    conf.write_text("# edited\n")
    proc = subprocess.run(run, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "keeping existing" in proc.stdout
    assert conf.read_text() == "# edited\n"


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_the_app_user_can_read_releases_the_service_writes(unit: Path) -> None:
    """The app runs as another user and opens releases through the live symlink: the
    store folders the service creates must stay traversable and the files readable."""
    s = settings(unit)
    state_mode = int(s.get("StateDirectoryMode", ["0755"])[-1], 8)
    umask = int(s.get("UMask", ["0022"])[-1], 8)
    assert state_mode & 0o005 == 0o005, "others cannot traverse the store root"
    assert umask & 0o005 == 0, "new slot folders would not be traversable by the app"
