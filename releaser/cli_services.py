"""The long-running services' commands: `watch` (the inbox) and `monitor` (checks, metrics).

Both run until SIGTERM and stop on their own terms (the group does not turn
their signals into exit 130). watchdog, APScheduler and prometheus_client are
imported only here, when the command runs.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click

from .cli_common import _click_error, _settings, json_option


@click.command()
@click.option("--inbox", type=click.Path(file_okay=False, path_type=Path), metavar="DIR",
              help="Folder to watch (overrides [watch] inbox).")
@click.option("--polling/--inotify", default=None,
              help="Poll the folder instead of inotify (network filesystems). "
                   "Default: [watch] polling.")
@json_option
def watch(inbox: Path | None, polling: bool | None, as_json: bool) -> None:
    """Publish every database dropped into the inbox folder.

    A file counts once its size and mtime have been stable for [watch]
    settle_s (dot-files and -journal/-wal/-shm files are ignored; files
    already there at start are processed too). Each is published like
    `releaser publish`, then moved to INBOX/done/ or INBOX/rejected/ with
    NAME.reason.json beside it. A busy store lock means a retry later, not
    a rejection. One line per file on stdout (--json: one JSON envelope per
    line). Runs until SIGTERM or Ctrl-C, finishing the current publish.

    \b
    Examples:
      releaser watch
      releaser watch --inbox /srv/builds/inbox --polling
      releaser -v watch --json
    """
    import json

    from .output import envelope
    from .watch import Watcher  # watchdog is only needed here

    config = _settings().config
    folder = inbox.absolute() if inbox else config.watch.inbox
    if folder is None:
        raise _click_error(
            f"{config.source or 'config'}: [watch] inbox is not set; add it or pass "
            "--inbox DIR", 2)

    def report(doc: dict[str, Any]) -> None:
        if as_json:  # one envelope per line (JSON lines), outcome as in reason.json
            click.echo(json.dumps(envelope("watch", doc["outcome"], doc), default=str))
        elif doc["outcome"] == "published":
            click.echo(f"{doc['file']}: published as release {doc['release_id']}")
        else:
            reason = doc["reasons"][0] if doc.get("reasons") else "no reason recorded"
            click.echo(f"{doc['file']}: {doc['outcome']}: {reason}")

    use_polling = config.watch.polling if polling is None else polling
    Watcher(config, folder, polling=use_polling, actor=os.environ.get("RELEASER_ACTOR", "watch"),
            on_result=report).run()


@click.command()
@click.option("--interval", "interval_s", type=click.FloatRange(min=0, min_open=True),
              metavar="SECONDS", help="Seconds between checks (overrides [monitor] interval_s).")
@click.option("--listen", metavar="HOST:PORT",
              help="Metrics address (overrides [monitor] metrics_listen; port 0 picks one).")
def monitor(interval_s: float | None, listen: str | None) -> None:
    """Check the live release on a schedule; auto-revert it when it goes bad.

    Runs until SIGTERM. Each check confirms the live file is the recorded
    release and runs the probes; the full sha256 and quick_check run every
    hash_every / integrity_every checks. After failures_before_revert failed
    checks in a row the release is marked bad and the previous good release
    is put back (once per bad release). Serves /metrics (Prometheus),
    /healthz and /status on [monitor] metrics_listen. Under systemd it is a
    Type=notify service with a watchdog.

    \b
    Examples:
      releaser -v monitor
      releaser monitor --interval 60 --listen 127.0.0.1:9464
      curl -s 127.0.0.1:9464/metrics | grep releaser_health
    """
    import dataclasses

    from .config_services import Monitor as MonitorConfig
    from .monitor import run_monitor

    config = _settings().config
    if interval_s is not None or listen is not None:
        try:
            mcfg = dataclasses.replace(
                config.monitor, interval_s=interval_s or config.monitor.interval_s,
                metrics_listen=listen or config.monitor.metrics_listen)
        except ValueError as exc:
            raise _click_error(f"--listen/--interval: {exc}", 2) from None
        assert isinstance(mcfg, MonitorConfig)
        config = dataclasses.replace(config, monitor=mcfg)
    sys.exit(run_monitor(config, announce=click.echo))
