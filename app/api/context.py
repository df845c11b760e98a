"""The outermost middleware: who the client is (forwarded headers believed only from FORWARDED_ALLOW_IPS), the
request id (an incoming X-Request-ID kept when it is safe, else a new one; returned as X-Request-ID and carried by
every log line of the request), and one access-log line per request."""

from __future__ import annotations

import ipaddress
import logging
import re
import time
import uuid

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.config import IpNetwork
from app.logs import request_id

access_log = logging.getLogger(__name__)  # the access log: one line per request (not a parent of the key audit log)

REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:\-]{0,127}")
SCHEMES = {"http", "https"}


def parse_ip(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(value.strip().strip("[]"))
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def is_loopback(host: str | None) -> bool:
    address = parse_ip(host) if host else None
    return address is not None and address.is_loopback


def trusted(host: str, proxies: list[IpNetwork] | None) -> bool:
    if proxies is None:
        return True
    address = parse_ip(host)
    return address is not None and any(address in net for net in proxies)


def forwarded_client(header: str, proxies: list[IpNetwork] | None) -> str | None:
    """The client named by X-Forwarded-For: the nearest hop (from the right) that is not a trusted proxy. With
    "*" only the last hop is taken: what the proxy that connected to us saw; the rest may be made up by anyone."""
    hops = [h.strip() for h in header.split(",") if h.strip()]
    if not hops:
        return None
    if proxies is None:
        return hops[-1]
    for hop in reversed(hops):
        if not trusted(hop, proxies):
            return hop
    return hops[0]


class RequestContext:
    def __init__(self, app: ASGIApp, proxies: list[IpNetwork] | None) -> None:
        self.app = app
        self.proxies = proxies  # None: any peer ("*")

    def _resolve_client(self, scope: Scope, headers: dict[bytes, bytes]) -> None:
        peer = scope.get("client")
        scope.setdefault("state", {})["peer"] = peer[0] if peer else None
        if peer is None or not trusted(peer[0], self.proxies):
            return
        forwarded = headers.get(b"x-forwarded-for")
        client = forwarded_client(forwarded.decode("latin-1"), self.proxies) if forwarded else None
        if client:
            scope["client"] = (client, 0)
        proto = headers.get(b"x-forwarded-proto", b"").decode("latin-1").split(",")[-1].strip().lower()
        if proto in SCHEMES:
            scope["scheme"] = proto

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        self._resolve_client(scope, headers)
        incoming = headers.get(b"x-request-id", b"").decode("latin-1")
        rid = incoming if REQUEST_ID.fullmatch(incoming) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid
        token = request_id.set(rid)
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message)["X-Request-ID"] = rid
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if scope["type"] == "http":
                duration = round((time.perf_counter() - started) * 1e3, 1)
                key = scope["state"].get("key")
                client = scope["client"][0] if scope.get("client") else None
                access_log.info(
                    "%s %s %d %.1f ms key=%s client=%s",
                    scope["method"],
                    scope["path"],
                    status,
                    duration,
                    key or "-",
                    client,
                    extra={
                        "method": scope["method"],
                        "path": scope["path"],
                        "status": status,
                        "duration_ms": duration,
                        "key": key,
                        "client": client,
                    },
                )
            request_id.reset(token)
