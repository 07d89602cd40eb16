"""releaser.unit_paths (run by `make install-systemd`): the folders the units write exist,
owned by the service user, and are exactly the units' ReadWritePaths=."""

from __future__ import annotations

import os
import pwd
import stat
from pathlib import Path

import pytest

from releaser import unit_paths

from .conftest import config_text


def _config(tmp_path: Path, inbox: Path | None) -> Path:
    extra = f'[watch]\ninbox = "{inbox}"\n' if inbox else ""
    conf = tmp_path / "releaser.toml"
    conf.write_text(config_text(tmp_path / "app" / "live" / "tags.db", tmp_path / "store",
                                extra))
    return conf


def _service_user() -> pwd.struct_passwd:
    if os.geteuid() != 0:
        pytest.skip("creating folders for another user needs root")
    return pwd.getpwnam("nobody")


def test_missing_folders_are_created_for_the_service_user(tmp_path: Path) -> None:
    user = _service_user()
    conf = _config(tmp_path, tmp_path / "srv" / "inbox")
    units = tmp_path / "units"
    units.mkdir()
    assert unit_paths.main(["--config", str(conf), "--unit-dir", str(units),
                            "--user", user.pw_name]) == 0
    for path, mode in ((tmp_path / "store", 0o755), (tmp_path / "app" / "live", 0o755),
                       (tmp_path / "srv" / "inbox", 0o2775)):
        st = path.stat()
        assert (st.st_uid, st.st_gid) == (user.pw_uid, user.pw_gid), path
        assert stat.S_IMODE(st.st_mode) == mode, path
    # a missing parent is the system's, not the service user's
    assert (tmp_path / "app").stat().st_uid == 0
    monitor = (units / "releaser-monitor.service.d" / "50-paths.conf").read_text()
    watch = (units / "releaser-watch.service.d" / "50-paths.conf").read_text()
    assert monitor.splitlines()[-2:] == [
        "ReadWritePaths=", f"ReadWritePaths={tmp_path / 'store'} {tmp_path / 'app' / 'live'}"]
    assert watch.splitlines()[-1] == (f"ReadWritePaths={tmp_path / 'store'} "
                                      f"{tmp_path / 'app' / 'live'} {tmp_path / 'srv' / 'inbox'}")


def test_a_second_run_changes_nothing_and_an_existing_folder_is_never_chowned(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    user = _service_user()
    live_dir = tmp_path / "app" / "live"
    live_dir.mkdir(parents=True)  # the app's folder, root's: reported, not taken over
    conf = _config(tmp_path, None)
    units = tmp_path / "units"
    units.mkdir()
    args = ["--config", str(conf), "--unit-dir", str(units), "--user", user.pw_name]
    assert unit_paths.main(args) == 0
    out = capsys.readouterr().out
    assert f"warning: {live_dir} (live) exists but nobody cannot write it" in out
    assert live_dir.stat().st_uid == 0
    dropin = units / "releaser-monitor.service.d" / "50-paths.conf"
    first = (dropin.read_text(), dropin.stat().st_mtime_ns, (tmp_path / "store").stat())
    assert unit_paths.main(args) == 0
    assert (dropin.read_text(), dropin.stat().st_mtime_ns, (tmp_path / "store").stat()) == first
    # without [watch] inbox the watcher gets the store and the live folder only
    watch = (units / "releaser-watch.service.d" / "50-paths.conf").read_text()
    assert watch.splitlines()[-1] == f"ReadWritePaths={tmp_path / 'store'} {live_dir}"


def test_a_bad_config_is_one_line_and_exit_2(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    conf = tmp_path / "releaser.toml"
    conf.write_text('live_path = "x"\nroot = "y"\nkeep_releases = "many"\n')
    assert unit_paths.main(["--config", str(conf), "--unit-dir", str(tmp_path),
                            "--user", pwd.getpwuid(os.getuid()).pw_name]) == 2
    err = capsys.readouterr().err
    assert str(conf) in err and "keep_releases" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
