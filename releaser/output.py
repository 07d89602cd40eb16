"""What the CLI writes on stdout: the --json envelope, human tables, a pipe-safe stdout.

Invariants:
- every --json result, success or error, is ONE document of the same shape:
  {"version": 1, "command": ..., "outcome": ..., "data": ...}, plus "error" and
  "exit_code" when the command failed (its stderr line says the same);
- a reader that goes away (`releaser history | head -1`) never turns into an error
  message or another exit code: the rest of stdout is dropped and the command ends
  as it would have;
- tables have a header, aligned columns sized to their content, and cut long text
  at a word boundary with an ellipsis.
"""

from __future__ import annotations

import io
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

JSON_VERSION = 1  # bumped when a field changes meaning or goes away; additions keep it


def envelope(command: str, outcome: str, data: Any, *, error: str | None = None,
             exit_code: int | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {"version": JSON_VERSION, "command": command, "outcome": outcome,
                           "data": data}
    if error is not None:
        doc["error"], doc["exit_code"] = error, exit_code
    return doc


def dumps(doc: Any) -> str:
    return json.dumps(doc, indent=2, default=str)


# -- tables ----------------------------------------------------------------------


def cut(text: str, width: int) -> str:
    """text on one line (a newline shows as \\n), at most width characters, cut at a word
    boundary with an ellipsis."""
    text = text.replace("\n", "\\n").replace("\r", "\\r").replace("\t", " ")
    if len(text) <= width:
        return text
    room = text[: width - 1]
    head = room.rsplit(" ", 1)[0] if " " in room else room
    return head.rstrip(" ,;:-") + "…"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]],
          right: Sequence[int] = ()) -> list[str]:
    """Aligned columns (two spaces apart) under a header; the last column is not padded;
    a cell's newline shows as \\n, so each row stays one line.
    right: indexes of right-aligned (numeric) columns."""
    cells = [[("" if c is None else str(c)).replace("\n", "\\n").replace("\r", "\\r")
              for c in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    out = []
    for row in [list(headers), *cells]:
        parts = []
        for i, cell in enumerate(row):
            last = i == len(row) - 1
            if i in right:
                parts.append(cell.rjust(widths[i]))
            else:
                parts.append(cell if last else cell.ljust(widths[i]))
        out.append("  ".join(parts).rstrip())
    return out


def ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3g} ms" if value < 10 else f"{value:.0f} ms"


# -- a stdout that a closed pipe cannot break ---------------------------------------


class _PipeSafeRaw(io.RawIOBase):
    """fd 1; after the reader went away (EPIPE) every write is dropped silently."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.broken = False

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return os.isatty(self.fd)

    def fileno(self) -> int:
        return self.fd

    def write(self, data: Any) -> int:
        n = len(data)
        if self.broken:
            return n
        view = memoryview(data)
        while view:
            try:
                written = os.write(self.fd, view)
            except BrokenPipeError:
                self.broken = True
                return n
            view = view[written:]
        return n


def pipe_safe_stdout() -> None:
    """Replace sys.stdout by one that drops output once the pipe's reader has gone
    (the way git and sqlite-utils stay quiet under `| head`)."""
    old = sys.stdout
    try:
        fd = old.fileno()
    except (AttributeError, ValueError, io.UnsupportedOperation):
        return  # not a real file (tests capture it): nothing to protect
    old.flush()
    sys.stdout = io.TextIOWrapper(
        io.BufferedWriter(_PipeSafeRaw(fd)), encoding=old.encoding or "utf-8",
        errors=old.errors or "strict", line_buffering=old.line_buffering,
        write_through=False)
