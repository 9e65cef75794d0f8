"""Running the app on uvicorn, with limits on slow, idle and numerous clients."""

from __future__ import annotations

import dataclasses
import functools

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol


@dataclasses.dataclass(frozen=True)
class ServerLimits:
    """What one client may hold: each limit frees what a slow or idle client would keep."""

    header_seconds: float = 10.0  # a request line and headers must arrive within this, else the connection closes
    keep_alive_seconds: float = 5.0  # an idle connection between requests closes after this
    max_connections: int = 256  # beyond, uvicorn answers 503 (its limit_concurrency)
    max_header_bytes: int = 16 * 1024  # a request head still incomplete past this gets 400 (h11's limit)


class HeaderDeadlineProtocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline on each request's head.

    uvicorn times out a connection only between requests, and any byte restarts
    that clock: a client sending nothing after connecting, or a header byte a second,
    holds its connection for ever. Here the head of each request must be complete
    ``header_seconds`` after the connection opened or the last response ended.
    """

    def __init__(self, *args, header_seconds: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.header_seconds = header_seconds
        self._head_deadline = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._arm_head_deadline()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._head_deadline is not None and self.conn.their_state is not h11.IDLE:  # a request's head arrived
            self._head_deadline.cancel()
            self._head_deadline = None

    def on_response_complete(self) -> None:
        super().on_response_complete()  # may start a pipelined request already received
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            self._arm_head_deadline()

    def connection_lost(self, exc) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
        super().connection_lost(exc)

    def _arm_head_deadline(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
        self._head_deadline = self.loop.call_later(self.header_seconds, self._head_too_slow)

    def _head_too_slow(self) -> None:
        self._head_deadline = None
        if not self.transport.is_closing():
            self.transport.close()


def server_config(app, host: str, port: int, limits: ServerLimits = ServerLimits(), access_log: bool = False,
                  log_level: str = "warning") -> uvicorn.Config:
    """uvicorn's settings for ``app``, with ``limits`` (h11, so they all apply)."""
    return uvicorn.Config(
        app, host=host, port=port, log_level=log_level, access_log=access_log,
        http=functools.partial(HeaderDeadlineProtocol, header_seconds=limits.header_seconds),
        timeout_keep_alive=limits.keep_alive_seconds, limit_concurrency=limits.max_connections,
        h11_max_incomplete_event_size=limits.max_header_bytes)
