"""uvicorn's HTTP protocol with the deadlines and the per-client bound it lacks (`python -m app` passes it as
uvicorn's `http` protocol class):

- HEADER_TIMEOUT: a connection that has not sent a whole request head within it (from its opening, or from the
  first byte of a later request on a kept-alive connection) gets 408 and is closed. uvicorn alone keeps such a
  connection open for good, and enough of them (1,100 sending one byte a second, measured) hold every slot of
  UVICORN_LIMIT_CONCURRENCY: /health answers 503. Such connections do not count against that limit either: a
  connection joins uvicorn's count once its first request head is in.
- MAX_CLIENT_CONNECTIONS: connections open at once from one peer address, WebSockets included, across every HTTP
  worker (app.core.SharedPeerCounts); the one over it is answered 429 and closed at once. Peers in
  FORWARDED_ALLOW_IPS are proxies that speak for many clients: not counted (nginx bounds its clients itself:
  limit_conn in deploy/nginx.conf).

The body's deadline (BODY_TIMEOUT) is the ASGI middleware app.api.errors.BodyDeadline: it answers in the API's
error shape and the access log records it."""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar, Protocol

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app.api.context import trusted
from app.config import IpNetwork, Settings

logger = logging.getLogger(__name__)


class Refusal(StrEnum):
    """Why a connection was closed before a request of it was served (the metric's `reason`)."""

    HEADER_TIMEOUT = "header_timeout"  # no whole request head within HEADER_TIMEOUT
    CLIENT_LIMIT = "client_limit"  # over MAX_CLIENT_CONNECTIONS from its address


def raw_response(status: int, reason: str, detail: str, error: str, extra: str = "") -> bytes:
    """A whole HTTP/1.1 answer in the API's error shape, written straight to the socket (no request reached the
    app), always closing the connection."""
    body = json.dumps({"detail": detail, "error": error}, separators=(",", ":")).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
        f"{extra}connection: close\r\n\r\n"
    )
    return head.encode("latin-1") + body


class PeerCounts(Protocol):
    """Open connections per peer address: this process's (LocalPeerCounts), or those of every HTTP worker
    (app.core.SharedPeerCounts)."""

    def admit(self, peer: str, limit: int) -> bool: ...

    def release(self, peer: str) -> None: ...


@dataclass
class LocalPeerCounts:
    """The count of one process (WORKERS=1), on its event loop's thread: no lock."""

    open_by_peer: Counter[str] = field(default_factory=Counter)

    def admit(self, peer: str, limit: int) -> bool:
        if self.open_by_peer[peer] >= limit:
            return False
        self.open_by_peer[peer] += 1
        return True

    def release(self, peer: str) -> None:
        self.open_by_peer[peer] -= 1
        if self.open_by_peer[peer] <= 0:
            del self.open_by_peer[peer]


@dataclass
class ConnectionGuard:
    """The state the protocol instances share: open connections per peer address, and the limits."""

    header_timeout: float
    max_per_client: int  # 0: no per-client bound
    proxies: list[IpNetwork] | None  # FORWARDED_ALLOW_IPS (None: any peer, "*")
    on_refused: Callable[[Refusal], None] = lambda reason: None  # counts refusals (a metric)
    counts: PeerCounts = field(default_factory=LocalPeerCounts)

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        on_refused: Callable[[Refusal], None] | None = None,
        counts: PeerCounts | None = None,
    ) -> ConnectionGuard:
        return cls(
            header_timeout=settings.header_timeout,
            max_per_client=settings.max_client_connections,
            proxies=settings.forwarded_networks,
            on_refused=on_refused or (lambda reason: None),
            counts=counts if counts is not None else LocalPeerCounts(),
        )

    def counted(self, peer: str | None) -> bool:
        """Whether this peer's connections are counted: a client, not a believed proxy (FORWARDED_ALLOW_IPS)."""
        if peer is None or not self.max_per_client:
            return False
        return not (self.proxies is None or trusted(peer, self.proxies))

    def admit(self, peer: str) -> bool:
        return self.counts.admit(peer, self.max_per_client)

    def release(self, peer: str) -> None:
        self.counts.release(peer)

    def protocol(self) -> type[GuardedHttpProtocol]:
        """The protocol class for uvicorn.Config(http=...), bound to this guard."""
        return type("GuardedHttpProtocol", (GuardedHttpProtocol,), {"guard": self})


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol plus ConnectionGuard's limits. One instance per connection, on the event loop
    thread (no locking)."""

    guard: ClassVar[ConnectionGuard]

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # Not one of uvicorn's connections (UVICORN_LIMIT_CONCURRENCY counts those) until a request head is in:
        # connections that never send one cannot take the slots of those that do.
        self.connections.discard(self)
        self._header_deadline: asyncio.TimerHandle | None = None
        self._peer: str | None = None  # set while this connection is counted against its peer
        peer = self.client[0] if self.client else None
        if peer is not None and self.guard.counted(peer):
            if not self.guard.admit(peer):
                self._refuse_connection(peer)
                return
            self._peer = peer
        self._arm_header_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_deadline()
        self._release()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        # The first byte of a request: on a kept-alive connection, the idle timeout stopped at it; its head must
        # now come within HEADER_TIMEOUT.
        super().on_message_begin()
        if self._header_deadline is None:
            self._arm_header_deadline()

    def on_headers_complete(self) -> None:
        self._cancel_header_deadline()
        self.connections.add(self)
        super().on_headers_complete()

    def handle_websocket_upgrade(self) -> None:
        super().handle_websocket_upgrade()
        if self._peer is None:
            return
        # The socket's own protocol serves the connection from here: it keeps the peer's count until it closes.
        peer, self._peer = self._peer, None
        socket_protocol: Any = self.transport.get_protocol()
        socket_lost = socket_protocol.connection_lost

        def released(exc: Exception | None) -> None:
            self.guard.release(peer)
            socket_lost(exc)

        socket_protocol.connection_lost = released

    def _release(self) -> None:
        if self._peer is not None:
            self.guard.release(self._peer)
            self._peer = None

    def _arm_header_deadline(self) -> None:
        self._header_deadline = self.loop.call_later(self.guard.header_timeout, self._headers_too_slow)

    def _cancel_header_deadline(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _headers_too_slow(self) -> None:
        self._header_deadline = None
        if self.transport.is_closing():
            return
        self.guard.on_refused(Refusal.HEADER_TIMEOUT)
        logger.debug("closing a connection from %s: no request head within HEADER_TIMEOUT", self.client)
        detail = f"the request head did not arrive within {self.guard.header_timeout:g} s (HEADER_TIMEOUT)"
        self.transport.write(raw_response(408, "Request Timeout", detail, "request_timeout"))
        self.transport.close()

    def _refuse_connection(self, peer: str) -> None:
        self.guard.on_refused(Refusal.CLIENT_LIMIT)
        logger.debug("refusing a connection from %s: over MAX_CLIENT_CONNECTIONS", peer)
        detail = (
            f"too many connections open at once from {peer} (at most {self.guard.max_per_client}, "
            "MAX_CLIENT_CONNECTIONS): close some or reuse them"
        )
        self.transport.write(raw_response(429, "Too Many Requests", detail, "rate_limited", "retry-after: 1\r\n"))
        self.transport.close()


class WorkerHttpProtocol(GuardedHttpProtocol):
    """The protocol of each HTTP worker (WORKERS > 1): uvicorn imports it by name in the worker process, and the
    worker's app factory (app.api.worker_app) gives it that process's guard before the first connection. The
    guard counts a peer's connections in the table all workers share (app.core.SharedPeerCounts): the kernel hands
    a client's connections to any worker, and counted per worker a peer could hold WORKERS x
    MAX_CLIENT_CONNECTIONS."""
