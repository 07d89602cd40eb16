"""What the CLI writes on stdout: the --json envelope, human tables, a pipe-safe stdout.

Invariants:
- every --json result, success or error, is ONE document of the same shape:
  {"version": 1, "command": ..., "outcome": ..., "data": ...}, plus "error" and
  "exit_code" when the command failed (its stderr line says the same);
- a reader that goes away (`releaser history | head -1`) never turns into an error
  message or another exit code: the rest of stdout is dropped and the command ends
  as it would have;
- tables have a header, aligned columns sized to their content, and cut long text
  at a word boundary with an ellipsis; a table given a width wraps its one long
  column within it, so no cell pads every row past the terminal.
"""

from __future__ import annotations

import io
import json
import os
import sys
import textwrap
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
          right: Sequence[int] = (), *, wrap: int | None = None,
          width: int | None = None) -> list[str]:
    """Aligned columns (two spaces apart) under a header; the last column is not padded;
    a cell's newline shows as \\n, so each row stays one line.
    right: indexes of right-aligned (numeric) columns.
    wrap, width: when a row would be wider than width, column `wrap` is narrowed to fit
    (never below WRAP_MIN characters) and its longer cells continue on the next lines,
    so one long cell no longer pads every row."""
    cells = [[("" if c is None else str(c)).replace("\n", "\\n").replace("\r", "\\r")
              for c in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    if wrap is not None and width is not None:
        others = sum(w for i, w in enumerate(widths) if i != wrap) + 2 * (len(widths) - 1)
        widths[wrap] = min(widths[wrap],
                           max(width - others, WRAP_MIN, len(headers[wrap])))
    out = []
    for row in [list(headers), *cells]:
        if wrap is None or len(row[wrap]) <= widths[wrap]:
            out.append(_line(row, widths, right))
            continue
        pieces = textwrap.wrap(row[wrap], widths[wrap], break_long_words=False) or [""]
        out.append(_line([*row[:wrap], pieces[0], *row[wrap + 1:]], widths, right))
        out.extend(_line(["" if i != wrap else piece for i in range(len(row))], widths, right)
                   for piece in pieces[1:])
    return out


WRAP_MIN = 20


def _line(row: Sequence[str], widths: Sequence[int], right: Sequence[int]) -> str:
    parts = []
    for i, cell in enumerate(row):
        if i in right:
            parts.append(cell.rjust(widths[i]))
        else:
            parts.append(cell if i == len(row) - 1 else cell.ljust(widths[i]))
    return "  ".join(parts).rstrip()


def size(n: int | None) -> str:
    """Bytes for people: 3 significant digits in B, kB, MB, GB (powers of 1000)."""
    if n is None:
        return "-"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n} B"


def terminal_width(indent: int = 0) -> int:
    """Columns left on the terminal after indent (100 when stdout is not a terminal and
    COLUMNS is unset: logs and pipes)."""
    import shutil

    return shutil.get_terminal_size((100, 24)).columns - indent


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
