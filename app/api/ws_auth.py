"""Who is on a WebSocket: its key, from the handshake or a first `auth` message, checked before it is served
(app.api.ws). Sockets waiting for that message have their own small budget (WS_AUTH_PENDING) and deadline
(WS_AUTH_TIMEOUT), apart from the MAX_CONCURRENT_CONNECTIONS served ones."""

from __future__ import annotations

import asyncio
import json
from contextlib import suppress
from typing import Any

from fastapi import WebSocket, WebSocketDisconnect
from fastapi.concurrency import run_in_threadpool

from app.access import KeyStore
from app.access import Scope as KeyScope
from app.api.auth import socket_key
from app.api.ws_protocol import CloseCode
from app.config import ReadAccess, Settings
from app.realtime import RealtimeStats

AUTH_MESSAGE_CHARS = 4096  # an auth message is small: a longer first message is refused unparsed


class SocketRefused(Exception):
    """Why a socket is closed before it is served: the error event's code and message, and the close code."""

    def __init__(self, code: str, message: str, close_code: CloseCode, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.close_code = close_code
        self.details = details or {}


class WaitingRoom:
    """Sockets waiting for their key message (WS_AUTH_PENDING places). When every place is taken, a newcomer takes
    the place of the socket that has waited longest, which is told to leave: a client that sends its key at once
    (within a round trip) gets in, whatever number of key-less sockets keep arriving; those only shorten each
    other's wait. Only the event loop uses it (no lock)."""

    def __init__(self, places: int) -> None:
        self.places = places
        self._waiting: dict[int, asyncio.Event] = {}  # insertion order: the longest waiting first

    def enter(self) -> tuple[asyncio.Event, bool]:
        """The newcomer's leave signal, and whether someone was told to leave to make room."""
        evicted = len(self._waiting) >= self.places
        if evicted:
            self._waiting.pop(next(iter(self._waiting))).set()
        signal = asyncio.Event()
        self._waiting[id(signal)] = signal
        return signal, evicted

    def leave(self, signal: asyncio.Event) -> None:
        self._waiting.pop(id(signal), None)

    def __len__(self) -> int:
        return len(self._waiting)


async def key_from_first_message(websocket: WebSocket, timeout: float, leave: asyncio.Event) -> str:
    """The key of a first message `{"command": "auth", "key": KEY}`, which must come within `timeout` seconds and
    before `leave` is set (the socket's place went to a newcomer)."""
    how = 'send {"command": "auth", "key": KEY} as the first message'
    receiving = asyncio.ensure_future(websocket.receive())
    told = asyncio.ensure_future(leave.wait())
    try:
        await asyncio.wait({receiving, told}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        told.cancel()
        if not receiving.done():
            receiving.cancel()
    if not receiving.done() or receiving.cancelled():
        if leave.is_set():
            raise SocketRefused(
                "connection_limit",
                "no key yet, and its place went to a newer socket (WS_AUTH_PENDING places, all taken): send the key "
                "at once, or in the handshake",
                CloseCode.TRY_AGAIN_LATER,
            )
        raise SocketRefused(
            "unauthorized", f"no key within WS_AUTH_TIMEOUT={timeout:g} s: {how}", CloseCode.POLICY_VIOLATION
        )
    message = receiving.result()
    if message["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(message.get("code", 1000))
    text = message.get("text")
    first = None
    if text is not None and len(text) <= AUTH_MESSAGE_CHARS:
        with suppress(ValueError, RecursionError):
            first = json.loads(text)
    if isinstance(first, dict) and first.get("command") == "auth" and isinstance(first.get("key"), str):
        return first["key"]
    raise SocketRefused("unauthorized", f"reads need an API key: {how}", CloseCode.POLICY_VIOLATION)


async def authorize_socket(websocket: WebSocket, stats: RealtimeStats) -> str:
    """Who is on this socket: the key's name, or "anonymous" while reads are open; SocketRefused otherwise. Called
    once the socket is accepted, before anything is served. Keys are checked as HTTP checks them (the `search`
    scope), from the handshake (app.api.auth.socket_key: the `oceano.key.KEY` subprotocol, an `X-API-Key` /
    `Authorization: Bearer` header, or the query parameter `key` of older clients), or, when reads need a key
    (AUTH_READS=key) and none came that way, from a first message `{"command": "auth", "key": "..."}` within
    WS_AUTH_TIMEOUT, answered `{"type": "auth", "status": "success", "key": NAME}`. Sockets waiting for that
    message have their own WS_AUTH_PENDING places (WaitingRoom), apart from MAX_CONCURRENT_CONNECTIONS: key-less
    sockets cannot crowd out the keyed ones. A key that is given must be valid, also while reads are open."""
    settings: Settings = websocket.app.state.settings
    store: KeyStore | None = getattr(websocket.app.state, "keys", None)
    key = socket_key(websocket.scope)
    from_message = False
    if key is None and settings.auth_reads is ReadAccess.KEY:
        room: WaitingRoom = websocket.app.state.ws_waiting_room
        leave, evicted = room.enter()  # before any await: the places hold however many connect at once
        stats.rejected_connections += evicted
        stats.authenticating = len(room)
        try:
            key = await key_from_first_message(websocket, settings.ws_auth_timeout, leave)
        finally:
            room.leave(leave)
            stats.authenticating = len(room)
        from_message = True
    if key is None:
        return "anonymous"
    info = await run_in_threadpool(store.authenticate, key) if store is not None else None
    if info is None or not info.allows(KeyScope.SEARCH):
        raise SocketRefused(
            "unauthorized", "unknown or revoked API key, or one without the `search` scope", CloseCode.POLICY_VIOLATION
        )
    if from_message:
        await websocket.send_json({"type": "auth", "status": "success", "key": info.name})
    return info.name
