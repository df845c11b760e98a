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


async def key_from_first_message(websocket: WebSocket, timeout: float) -> str:
    """The key of a first message `{"command": "auth", "key": KEY}`, which must come within `timeout` seconds."""
    how = 'send {"command": "auth", "key": KEY} as the first message'
    try:
        message = await asyncio.wait_for(websocket.receive(), timeout=timeout)
    except TimeoutError:
        raise SocketRefused(
            "unauthorized", f"no key within WS_AUTH_TIMEOUT={timeout:g} s: {how}", CloseCode.POLICY_VIOLATION
        ) from None
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
    message have their own WS_AUTH_PENDING places, apart from MAX_CONCURRENT_CONNECTIONS: key-less sockets
    cannot crowd out the keyed ones. A key that is given must be valid, also while reads are open."""
    settings: Settings = websocket.app.state.settings
    store: KeyStore | None = getattr(websocket.app.state, "keys", None)
    key = socket_key(websocket.scope)
    from_message = False
    if key is None and settings.auth_reads is ReadAccess.KEY:
        if stats.authenticating >= settings.ws_auth_pending:
            stats.rejected_connections += 1
            raise SocketRefused(
                "connection_limit",
                f"too many sockets waiting to send their key ({settings.ws_auth_pending}, WS_AUTH_PENDING); retry "
                "later, or send the key in the handshake",
                CloseCode.TRY_AGAIN_LATER,
                {"ws_auth_pending": settings.ws_auth_pending},
            )
        stats.authenticating += 1  # before any await: the limit holds however many connect at once
        try:
            key = await key_from_first_message(websocket, settings.ws_auth_timeout)
        finally:
            stats.authenticating -= 1
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
