"""One HTTP request with one deadline for all of it (verify probes, webhooks).

Connect, send, status line, headers (and redirects) and an optional bounded body
share a single deadline: at expiry the sockets are shut down, so a peer trickling
bytes cannot stretch a request past it. No proxy from the environment is used.
Any status is an answer; no answer at all raises NoAnswer.
"""

from __future__ import annotations

import http.client
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from contextlib import suppress
from typing import Any


class NoAnswer(Exception):
    """An HTTP request got no (complete) answer: refused, reset, or past its deadline."""


class _Deadline:
    """One deadline for a whole request: at expiry the sockets are shut down.

    The socket timeout alone applies per read, so a peer sending a byte now and
    then would never trip it; shutting the socket down ends any blocked read.
    """

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.at = time.monotonic() + timeout_s
        self.expired = False
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(timeout_s, self._fire)
        self._timer.daemon = True

    def __enter__(self) -> _Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()

    def _fire(self) -> None:
        with self._lock:
            self.expired = True
            socks = list(self._socks)
        for sock in socks:
            with suppress(OSError):  # already closed: nothing to interrupt
                sock.shutdown(socket.SHUT_RDWR)

    def _watch(self, sock: socket.socket | None) -> None:
        if sock is None:
            return
        with self._lock:
            self._socks.append(sock)
            expired = self.expired
        if expired:
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def connection(self, http_class: Callable[..., http.client.HTTPConnection]
                   ) -> Callable[..., http.client.HTTPConnection]:
        """A factory for urllib's do_open: connections that connect within the deadline."""
        def make(host: str, **kw: Any) -> http.client.HTTPConnection:
            conn = http_class(host, **kw)
            plain_connect = conn.connect

            def connect() -> None:
                left = self.at - time.monotonic()
                if left <= 0:
                    raise TimeoutError("timed out")
                conn.timeout = min(conn.timeout or left, left)
                plain_connect()
                self._watch(conn.sock)  # (TLS: the handshake is bounded per read only)

            conn.connect = connect  # type: ignore[method-assign]
            return conn
        return make


class _DeadlineOpen:
    """Mixed into urllib's HTTP(S) handlers: their connections honour one deadline."""

    def __init__(self, deadline: _Deadline) -> None:
        super().__init__()
        self.deadline = deadline

    def do_open(self, http_class: Any, req: Any, **kw: Any) -> Any:
        return super().do_open(  # type: ignore[misc]
            self.deadline.connection(http_class), req, **kw)


class _DeadlineHTTP(_DeadlineOpen, urllib.request.HTTPHandler):
    pass


class _DeadlineHTTPS(_DeadlineOpen, urllib.request.HTTPSHandler):
    pass


def http_request(url: str, *, timeout_s: float, data: bytes | None = None,
                 method: str | None = None, headers: dict[str, str] | None = None,
                 body_max: int = 0) -> tuple[int, bytes]:
    """(status, body) of one request that ends within timeout_s in all.

    Connect, send, status line, headers (and redirects) and, with body_max > 0,
    up to body_max bytes of the body share one deadline. Any status is an answer
    (a non-2xx too). No proxy from the environment is used. Raises NoAnswer.
    """
    deadline = _Deadline(timeout_s)
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({}), _DeadlineHTTP(deadline), _DeadlineHTTPS(deadline))
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    late = f"no complete answer within {timeout_s:g} s"
    with deadline:
        resp: Any
        try:
            resp = opener.open(req, timeout=timeout_s)
        except urllib.error.HTTPError as exc:  # a non-2xx answer is still an answer
            resp = exc
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            if deadline.expired:
                raise NoAnswer(late) from None
            raise NoAnswer(str(getattr(exc, "reason", exc)) or type(exc).__name__) from None
        try:
            status = int(resp.code)
            body = b""
            if body_max and resp.fp is not None:
                try:
                    body = resp.read(body_max)
                except (OSError, http.client.HTTPException) as exc:
                    raise NoAnswer(late if deadline.expired else
                                   f"status {status}, body unreadable: {exc!r}") from None
                if deadline.expired:  # the body may be cut short by the shutdown
                    raise NoAnswer(late)
        finally:
            with suppress(Exception):
                resp.close()
    return status, body
