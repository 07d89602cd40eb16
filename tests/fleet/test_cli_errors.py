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
