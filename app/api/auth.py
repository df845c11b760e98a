"""Who may call what, and how often: the route -> scope table, API keys from the request headers, protected mode,
rate limits. One middleware (AccessGuard) applies all of it before a request's body is read.

- A route's scope comes from ROUTE_SCOPES (one table; a path missing from it needs `admin`: fail closed).
- Search routes are open unless AUTH_READS=key. Write and admin routes need a key with the scope (admin covers
  every scope); while no key exists at all (protected mode), they are accepted from loopback clients only.
- A key is sent as `X-API-Key: KEY` or `Authorization: Bearer KEY`; an unknown or revoked one is 401 wherever
  it is sent.
- RATE_LIMIT counts per key name, or per client address when no valid key is sent; /health and /metrics are
  not counted. Over it: 429 with Retry-After, from the window's reset."""

from __future__ import annotations

from typing import Protocol
from urllib.parse import parse_qs

from starlette.routing import compile_path
from starlette.types import ASGIApp, Receive, Scope, Send

from app.access import KeyInfo, KeyStore, RateLimiter
from app.access import Scope as KeyScope
from app.api.context import is_loopback
from app.api.errors import error_response
from app.api.routing import UNMATCHED, RouteTable, route_path
from app.config import ReadAccess, Settings
from app.errors import AccessDenied, NotAuthenticated, OceanoError, RateLimited, ShuttingDown

PUBLIC = None  # no key ever needed

# The one table: (method, route path) -> the scope a caller needs. HEAD is looked up as GET.
ROUTE_SCOPES: dict[tuple[str, str], KeyScope | None] = {
    ("GET", "/health"): PUBLIC,
    # Request counts per key name and the collection's size: a read, as open as the searches (AUTH_READS); under
    # AUTH_READS=key, Prometheus sends a search-scoped key (its `authorization` setting).
    ("GET", "/metrics"): KeyScope.SEARCH,
    ("GET", "/"): PUBLIC,  # the page itself holds no data; with AUTH_READS=key it asks for the key
    ("GET", "/people"): PUBLIC,  # likewise: it reads everything through the API with the key
    ("GET", "/live"): PUBLIC,  # likewise; its socket (/ws) checks the key itself (app.api.ws_auth.authorize_socket)
    ("GET", "/static/{file:path}"): PUBLIC,
    ("GET", "/docs"): PUBLIC,
    ("GET", "/docs/oauth2-redirect"): PUBLIC,
    ("GET", "/redoc"): PUBLIC,
    ("GET", "/openapi.json"): PUBLIC,
    ("POST", "/search"): KeyScope.SEARCH,
    ("POST", "/api/search"): KeyScope.SEARCH,
    ("POST", "/api/search/batch"): KeyScope.SEARCH,
    ("POST", "/api/analyze"): KeyScope.SEARCH,
    ("GET", "/api/heads"): KeyScope.SEARCH,
    ("GET", "/api/heads/{name}"): KeyScope.SEARCH,
    ("GET", "/thumbs/{face_id}"): KeyScope.SEARCH,
    ("GET", "/status"): KeyScope.SEARCH,
    ("GET", "/api/stats"): KeyScope.SEARCH,
    ("POST", "/api/faces"): KeyScope.WRITE,
    ("DELETE", "/api/faces/{face_id}"): KeyScope.WRITE,
    ("DELETE", "/api/faces"): KeyScope.WRITE,
    ("POST", "/api/ingest"): KeyScope.WRITE,
    ("GET", "/api/jobs"): KeyScope.WRITE,
    ("GET", "/api/jobs/{job_id}"): KeyScope.WRITE,
    ("DELETE", "/api/jobs/{job_id}"): KeyScope.WRITE,
    ("POST", "/api/clusters"): KeyScope.WRITE,
    ("GET", "/api/clusters"): KeyScope.SEARCH,
    ("GET", "/api/clusters/{cluster_id}"): KeyScope.SEARCH,
    ("POST", "/api/clusters/{cluster_id}/name"): KeyScope.WRITE,
    ("POST", "/api/clusters/{cluster_id}/merge"): KeyScope.WRITE,
    ("DELETE", "/api/clusters/{cluster_id}/faces/{face_id}"): KeyScope.WRITE,
    ("GET", "/api/subjects"): KeyScope.SEARCH,
    ("GET", "/api/subjects/{name}"): KeyScope.SEARCH,
    ("PATCH", "/api/subjects/{name}"): KeyScope.WRITE,
    ("POST", "/api/subjects/{name}/merge"): KeyScope.WRITE,
    ("DELETE", "/api/subjects/{name}"): KeyScope.WRITE,
    ("GET", "/api/faces"): KeyScope.SEARCH,
    ("POST", "/api/faces/{face_id}/subject"): KeyScope.WRITE,
    ("GET", "/api/faces/{face_id}/similar"): KeyScope.SEARCH,
    ("GET", "/api/people/overview"): KeyScope.SEARCH,
    ("POST", "/api/feedback"): KeyScope.WRITE,
    ("GET", "/api/feedback"): KeyScope.SEARCH,
    ("GET", "/api/feedback/export"): KeyScope.SEARCH,
    ("POST", "/api/feedback/calibrate"): KeyScope.ADMIN,
    ("POST", "/api/calibrate/subjects"): KeyScope.ADMIN,
    ("GET", "/api/keys"): KeyScope.ADMIN,
    ("POST", "/api/keys"): KeyScope.ADMIN,
    ("DELETE", "/api/keys/{name}"): KeyScope.ADMIN,
}
NOT_COUNTED = frozenset({"/health", "/metrics"})
HOW_TO_SEND = "send it as `X-API-Key: KEY` or `Authorization: Bearer KEY`"


# A browser cannot set headers on a WebSocket: it offers the subprotocols `oceano` and `oceano.key.KEY` instead
# (a key is made of token characters), and the service answers `oceano`, never the key.
SUBPROTOCOL = "oceano"
KEY_SUBPROTOCOL = "oceano.key."


def socket_key(scope: Scope) -> str | None:
    """The key a WebSocket handshake brings: the `oceano.key.KEY` subprotocol, an `X-API-Key` or `Authorization:
    Bearer` header, or (older clients) the query parameter `key`."""
    for offered in scope.get("subprotocols") or ():
        if offered.startswith(KEY_SUBPROTOCOL) and len(offered) > len(KEY_SUBPROTOCOL):
            return str(offered[len(KEY_SUBPROTOCOL) :])
    key = presented_key(dict(scope["headers"]))
    if key is None:
        values = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("key")
        key = values[0] if values and values[0] else None
    return key


def presented_key(headers: dict[bytes, bytes]) -> str | None:
    key = headers.get(b"x-api-key")
    if key:
        return key.decode("latin-1").strip()
    scheme, _, value = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


_COMPILED = [(method, compile_path(path)[0], needed) for (method, path), needed in ROUTE_SCOPES.items()]


def route_scope(method: str, path: str) -> KeyScope | None:
    """The scope a request needs, from ROUTE_SCOPES; `admin` for a route the table does not name (fail closed: a
    route added without an entry here is not opened by mistake). Paths no route serves never get here (404)."""
    method = "GET" if method == "HEAD" else method
    for entry_method, regex, needed in _COMPILED:
        if entry_method == method and regex.match(path):
            return needed
    return KeyScope.ADMIN


def decide(
    needed: KeyScope | None, info: KeyInfo | None, local: bool, store: KeyStore, reads: ReadAccess
) -> OceanoError | None:
    """None when the request may go on, else the error to answer."""
    if needed is PUBLIC or (needed is KeyScope.SEARCH and reads is ReadAccess.OPEN):
        return None
    if info is not None:
        if info.allows(needed):
            return None
        return AccessDenied(
            f"the API key {info.name!r} lacks the `{needed}` scope this route needs (its scopes: "
            f"{', '.join(info.scope_list)}); use a key with `{needed}` or `admin`"
        )
    if store.has_keys():
        return NotAuthenticated(f"this route needs an API key with the `{needed}` scope: {HOW_TO_SEND}")
    if local:
        return None  # protected mode: no key exists yet, this machine may
    return AccessDenied(
        "no API key exists yet, so this route answers clients on the service's own machine only "
        "(protected mode). Create a key there (python -m app.keys create --name NAME --scope "
        f"{needed}) and {HOW_TO_SEND}"
    )


class Limiter(Protocol):
    def acquire(self, identity: str) -> float | None: ...


class AccessGuard:
    """`limiter`: where RATE_LIMIT is counted when not in this process (the core's, for an HTTP worker)."""

    def __init__(self, app: ASGIApp, settings: Settings, limiter: Limiter | None = None) -> None:
        self.app = app
        self.reads = settings.auth_reads
        self.limiter: Limiter | None = None
        if settings.rate_limits:
            self.limiter = limiter or RateLimiter(settings.rate_limits)
        self.limit_text = settings.rate_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":  # the socket checks its key itself (app.api.ws_auth.authorize_socket)
            error = self._check_handshake(scope)
            if error is not None:
                await refuse_handshake(error, scope, receive, send)
                return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if RouteTable.of(scope["app"]).template(route_path(scope)) == UNMATCHED:
            await self.app(scope, receive, send)  # no route serves this path: the router's 404, nothing to guard
            return
        error = self._check(scope)
        if error is not None:
            await error_response(error)(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _check_handshake(self, scope: Scope) -> OceanoError | None:
        """RATE_LIMIT for WebSocket handshakes, counted as HTTP requests are: per key name when the handshake
        brings a valid key, else per client address."""
        if self.limiter is None:
            return None
        store: KeyStore | None = getattr(scope["app"].state, "keys", None)
        key = socket_key(scope)
        info = store.authenticate(key) if store is not None and key is not None else None
        return self._limit(info, scope)

    def _limit(self, info: KeyInfo | None, scope: Scope) -> OceanoError | None:
        assert self.limiter is not None
        client = scope["client"][0] if scope.get("client") else None
        identity = f"key:{info.name}" if info is not None else f"client:{client}"
        wait = self.limiter.acquire(identity)
        if wait is None:
            return None
        who = f"the key {info.name!r}" if info is not None else f"the client {client}"
        return RateLimited(
            f"too many requests from {who} (RATE_LIMIT {self.limit_text}); retry in {wait:.0f} s", retry_after=wait
        )

    def _check(self, scope: Scope) -> OceanoError | None:
        needed = route_scope(scope["method"], scope["path"])
        store: KeyStore | None = getattr(scope["app"].state, "keys", None)
        if store is None and needed is not PUBLIC:
            return ShuttingDown("the service is not serving yet")
        client = scope["client"][0] if scope.get("client") else None
        state = scope.setdefault("state", {})
        key = presented_key(dict(scope["headers"])) if needed is not PUBLIC else None
        info = store.authenticate(key) if store is not None and key is not None else None
        if info is not None:
            state["key"] = info.name  # for the access log: every request, writes included, names its key
        if self.limiter is not None and scope["path"] not in NOT_COUNTED:
            limited = self._limit(info, scope)
            if limited is not None:
                return limited
        if key is not None and info is None:
            return NotAuthenticated(f"unknown or revoked API key: {HOW_TO_SEND} with a valid key")
        if needed is PUBLIC or store is None:
            return None
        # Local: the connection itself comes from loopback, and no believed proxy says it came from elsewhere
        # (a forwarded header alone never makes a client local, whatever FORWARDED_ALLOW_IPS trusts).
        local = is_loopback(client) and is_loopback(state.get("peer", client))
        return decide(needed, info, local, store, self.reads)


async def refuse_handshake(error: OceanoError, scope: Scope, receive: Receive, send: Send) -> None:
    """A WebSocket handshake refused with the HTTP answer a request would get (429 with Retry-After), where the
    server can send one (the ASGI `websocket.http.response` extension: uvicorn); else closed before it is
    accepted (the server answers 403)."""
    if "websocket.http.response" in scope.get("extensions", {}):
        await error_response(error)(scope, receive, send)
    else:
        await send({"type": "websocket.close", "code": 1008})
