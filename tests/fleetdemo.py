"""`make demo-fleet`: a local SeaweedFS, three agents, two pushes, a fleet rollback,
`releaser fleet status`, then everything stopped (also on failure or Ctrl-C).

    python -m tests.fleetdemo DIR
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from tests.s3server import CREDENTIALS, WeedServer
from tests.sample import write_sample

REPO = Path(__file__).resolve().parent.parent
RELEASER = str(Path(sys.executable).parent / "releaser")
HOSTS = ("app-1", "app-2", "app-3")


def write_config(base: Path, name: str, endpoint: str) -> Path:
    text = (REPO / "config" / "releaser.toml").read_text()
    text = re.sub(r'(?m)^live_path = .*$', f'live_path = "{base / name / "app" / "tags.db"}"',
                  text)
    text = re.sub(r'(?m)^root = .*$', f'root = "{base / name / "store"}"', text)
    text += (f'\n[fleet]\nurl = "s3://releases/demo"\nendpoint_url = "{endpoint}"\n'
             f'region = "us-east-1"\nchannel = "production"\nhost_id = "{name}"\n'
             f'poll_s = 1\npublic_keys = ["{base / "fleet.pub"}"]\n')
    if name == "build":
        text += f'signing_key = "{base / "fleet.key"}"\n'
    path = base / name / "releaser.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def releaser(config: Path, *args: str, show: bool = True) -> str:
    if show:
        print(f"\n$ releaser {' '.join(args)}", flush=True)
    out = subprocess.run([RELEASER, "--config", str(config), *args], check=True,
                         capture_output=True, text=True).stdout
    if show:
        print(out, end="", flush=True)
    return out


def wait_applied(build: Path, seq: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = json.loads(releaser(build, "fleet", "status", "--json", show=False))["data"]
        hosts = [h for h in status["hosts"] if h["host_id"] in HOSTS]
        if len(hosts) == len(HOSTS) and all(h["state"] == "applied" and h["seq"] == seq
                                            for h in hosts):
            print(f"  ... all {len(HOSTS)} agents applied seq {seq}", flush=True)
            return
        time.sleep(0.5)
    raise SystemExit(f"agents did not apply seq {seq} within {timeout}s")


def main() -> None:
    base = Path(sys.argv[1]).absolute()
    base.mkdir(parents=True, exist_ok=True)
    for key, value in CREDENTIALS.items():
        os.environ.setdefault(key, value)
    server = WeedServer(base / "weed")
    agents: list[subprocess.Popen[bytes]] = []
    try:
        server.start()
        print(f"SeaweedFS (weed mini) on {server.endpoint_url}, data in {base / 'weed'}")
        build = write_config(base, "build", server.endpoint_url)
        releaser(build, "fleet", "keygen", "--secret", str(base / "fleet.key"),
                 "--public", str(base / "fleet.pub"))
        for name in HOSTS:
            config = write_config(base, name, server.endpoint_url)
            log = open(base / name / "agent.log", "wb")  # noqa: SIM115
            agents.append(subprocess.Popen([RELEASER, "--config", str(config), "-v",
                                            "agent"], stdout=log, stderr=log))
        print(f"started {len(HOSTS)} agents (logs: {base}/app-*/agent.log)")
        for seq, (rows, seed, note) in enumerate(
                [(140000, 1, "first build"), (141000, 2, "second build")], start=1):
            db = base / "builds" / f"tags-{seq}.db"
            write_sample(db, rows=rows, seed=seed)
            releaser(build, "fleet", "push", str(db), "--note", note)
            wait_applied(build, seq)
        releaser(build, "fleet", "rollback", "--note", "demo rollback")
        wait_applied(build, 3)
        releaser(build, "fleet", "status")
        releaser(build, "fleet", "releases")
    finally:
        for proc in agents:
            proc.terminate()
        for proc in agents:
            proc.wait(timeout=30)
        server.stop()
        print(f"\nstopped the agents and SeaweedFS; everything is in {base}")


if __name__ == "__main__":
    main()
