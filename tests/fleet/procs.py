"""Test-side fault points for fleet processes: run the real CLI with one function
patched (nothing in releaser reads an environment switch for this).

  python procs.py pause-download ARGS...   `releaser ARGS` whose first download stops
                                           after its first chunk is on disk (prints
                                           "paused-download" and sleeps: SIGKILL it)
  python procs.py barrier-push DIR N ARGS... `releaser ARGS` (a push) that, after reading
                                           the channel pointer and uploading, waits until
                                           N pushers reached that point before its CAS
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path


def pause_download() -> None:
    from releaser.fleet import bucket

    real = bucket.Bucket.download

    def download(self, name, out, *, max_bytes, on_chunk=None):  # noqa: ANN001, ANN202
        def first(chunk: bytes) -> None:
            if on_chunk is not None:
                on_chunk(chunk)
            out._dst.flush()
            print("paused-download", flush=True)
            time.sleep(3600)

        return real(self, name, out, max_bytes=max_bytes, on_chunk=first)

    bucket.Bucket.download = download  # type: ignore[method-assign]


def barrier_push(folder: Path, n: int) -> None:
    from releaser.fleet import channel

    real = channel.move

    def move(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        (folder / f"at-cas-{os.getpid()}").touch()
        deadline = time.monotonic() + 30
        while len(list(folder.glob("at-cas-*"))) < n and time.monotonic() < deadline:
            time.sleep(0.01)
        return real(*args, **kwargs)

    channel.move = move


def main() -> None:
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "pause-download":
        pause_download()
    elif mode == "barrier-push":
        barrier_push(Path(args[0]), int(args[1]))
        args = args[2:]
    else:
        raise SystemExit(f"unknown mode {mode}")
    from releaser.cli import cli

    cli(args, prog_name="releaser")


if __name__ == "__main__":
    main()
