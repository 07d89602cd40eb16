"""Bad input to the fleet commands: one line, the documented exit code, nothing changed."""

from __future__ import annotations

import sqlite3

from tests.fleet.fleetenv import Fleet


def test_push_failing_gates_uploads_nothing(fleet: Fleet) -> None:
    db = fleet.make_db("bad.db", seed=1)
    conn = sqlite3.connect(db)
    conn.execute("DELETE FROM tags_final")
    conn.commit()
    conn.close()
    result = fleet.build.cli("fleet", "push", str(db), "--channel", "staging", expect=1)
    assert "rejected by the local gates, nothing uploaded" in result.stderr
    assert result.stderr.count("\n") == 1
    assert list(fleet.bucket.list("")) == []


def test_config_and_endpoint_errors(fleet: Fleet) -> None:
    text = fleet.build.config.read_text()
    fleet.build.config.write_text(text.replace(f'url = "{fleet.url}"', 'url = "http://x"'))
    result = fleet.build.cli("fleet", "status", expect=2)
    assert "fleet: url must be \"s3://BUCKET/PREFIX\"" in result.stderr
    fleet.build.config.write_text(text.replace(fleet.endpoint, "http://127.0.0.1:9"))
    result = fleet.build.cli("fleet", "status", expect=5)
    assert "check [fleet] endpoint_url" in result.stderr
    assert result.stderr.count("\n") == 1
    fleet.build.config.write_text(text.split("[fleet]")[0])
    result = fleet.build.cli("fleet", "rollback", "--channel", "staging", expect=2)
    assert "no [fleet] url" in result.stderr
    fleet.build.config.write_text(text)
    result = fleet.build.cli("fleet", "rollback", "--channel", "staging", expect=4)
    assert "no pointer yet" in result.stderr
    listed = fleet.build.cli("fleet", "releases", "--channel", "staging").stdout
    assert listed.startswith("no pointer yet on this channel"), listed
    result = fleet.build.cli("fleet", "status", "--channel", "../x", expect=2)
    assert "channel '../x'" in result.stderr


def test_agent_once_exit_codes(fleet: Fleet) -> None:
    import json

    from releaser.fleet import layout

    host = fleet.host("once")
    pushed = fleet.push(fleet.make_db("one.db", seed=1))
    host.run("agent", "--once", expect=0)
    assert host.live_sha() == pushed["sha256"]
    fleet.push(fleet.make_db("two.db", rows=2100, seed=2))
    outer = json.loads(fleet.bucket.get(layout.channel("staging")).body)
    fleet.bucket.put(layout.channel("staging"), json.dumps({"payload": outer["payload"]})
                     .encode())
    host.run("agent", "--once", expect=1)
    assert host.live_sha() == pushed["sha256"]


def test_missing_credentials_say_so(tmp_path) -> None:  # noqa: ANN001
    """No S3 credentials anywhere: the line names credentials, not the endpoint."""
    import os
    import subprocess

    from click.testing import CliRunner

    from releaser.cli import cli
    from tests.conftest import RELEASER_BIN

    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(HOME=str(tmp_path), AWS_EC2_METADATA_DISABLED="true")
    made = CliRunner().invoke(cli, ["fleet", "keygen", "--secret", str(tmp_path / "k"),
                                    "--public", str(tmp_path / "k.pub")])
    assert made.exit_code == 0, made.output  # in-process: only the status below is under test
    config = tmp_path / "releaser.toml"
    config.write_text(f'root = "{tmp_path}/store"\nlive_path = "{tmp_path}/app/tags.db"\n'
                      '[fleet]\nurl = "s3://b/p"\nendpoint_url = "http://127.0.0.1:9"\n'
                      f'public_keys = ["{tmp_path}/k.pub"]\n')
    proc = subprocess.run([str(RELEASER_BIN), "--config", str(config), "fleet", "status",
                           "--channel", "staging"], env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 5, proc.stderr
    assert "no S3 credentials; set AWS_ACCESS_KEY_ID" in proc.stderr, proc.stderr
    assert proc.stderr.count("\n") == 1 and "endpoint_url" not in proc.stderr
