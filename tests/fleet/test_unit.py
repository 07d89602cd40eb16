"""systemd/releaser-agent.service: the settings the issue asks for (systemd-analyze
verify and security run on every unit in tests/test_systemd.py)."""

from __future__ import annotations

from tests.conftest import REPO
from tests.test_systemd import settings

UNIT = REPO / "systemd" / "releaser-agent.service"


def test_agent_unit_settings() -> None:
    s = settings(UNIT)
    one = {k: v[-1] for k, v in s.items()}
    assert one["Type"] == "notify" and one["ExecStart"].split()[-1] == "agent"
    assert int(one["WatchdogSec"]) > 0 and one["Restart"] == "on-failure"
    assert one["User"] == "releaser" and one["ProtectSystem"] == "strict"
    for key in ("ProtectHome", "NoNewPrivileges", "PrivateTmp", "MemoryDenyWriteExecute"):
        assert one[key] == "yes", key
    # the default [fleet] download_dir is ROOT.incoming: created and writable
    assert one["StateDirectory"].split() == ["releaser", "releaser.incoming"]
    assert "/var/lib/releaser.incoming" in one["ReadWritePaths"].split()
    # credentials come from the SDK's chain (an environment file), never the unit text
    assert one["EnvironmentFile"].startswith("-/etc/releaser/")
    assert not any(v.startswith("AWS_") for v in s.get("Environment", []))
