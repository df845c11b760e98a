"""GET /ws: frames and commands over one WebSocket (message shapes in app.api.ws_protocol); GET /api/stats.

Back-pressure, per connection: at most one frame (process_frame or predict) in the engine and the newest one
waiting; a frame arriving while another waits replaces it, and the replaced one is dropped and counted
(`frames_dropped` in every answer). Commands without a frame (health, emotions, ...) are answered at once, even
while a frame is being processed. Frames of all sockets go through FaceService, so they share the request
batcher and its admission control: when the engine has more work ahead than GPU_ACQUIRE_TIMEOUT, a frame is
answered with an error event (code `busy`, `retry_after` in seconds) instead of queueing. At most
MAX_CONCURRENT_CONNECTIONS sockets are served; the next one gets an error event (code `connection_limit`) and is
closed with code 1013 (try again later) and the reason. JSON parsing of large messages, base64 and image decoding
run in the thread pool, never on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request, WebSocket, WebSocketDisconnect
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from app import __version__
from app.api import ws_protocol as proto
from app.api.auth import SUBPROTOCOL
from app.api.contract import errors
from app.api.memory import heap_trimmer
from app.api.upload import engine_call, in_thread
from app.api.ws_auth import SocketRefused, authorize_socket
from app.api.ws_protocol import CloseCode, Envelope, Incoming, ProtocolError
from app.config import WS_ENVELOPE_BYTES, Settings
from app.engine import Ticket
from app.errors import EngineBusy, OceanoError
from app.realtime import (
    AlertThrottle,
    CrowdScale,
    FrameAnalyzer,
    FrameOptions,
    FrameResult,
    Prediction,
    RealtimeStats,
    connection_alert,
    crowd_alert,
)
from app.realtime.alerts import processing_alert
from app.service import FaceServiceApi

logger = logging.getLogger(__name__)
router = APIRouter(tags=["realtime"])

INLINE_JSON_CHARS = 64 * 1024  # larger messages are parsed in the thread pool
ANSWERED = (OceanoError, ProtocolError)  # errors answered with an error event (not bugs)


def message_bytes(text: str) -> int:
    """A text message's size as it came (UTF-8); isascii() is O(1), so the common case costs no encoding."""
    return len(text) if text.isascii() else len(text.encode(errors="surrogatepass"))


@dataclass(slots=True)
class Job:
    """A frame waiting for the engine."""

    incoming: Incoming
    text: str  # base64
    options: FrameOptions | None  # None: predict
    timestamp: float | int
    frame_id: int


class Connection:
    def __init__(
        self, websocket: WebSocket, *, service: FaceServiceApi, settings: Settings, stats: RealtimeStats
    ) -> None:
        self.websocket = websocket
        self.service = service
        self.settings = settings
        self.stats = stats
        self.client_id = uuid.uuid4().hex
        self.analyzer = FrameAnalyzer(
            service, CrowdScale.from_settings(settings), predict_max_side=settings.predict_max_side
        )
        self.throttle = AlertThrottle(settings.alert_cooldown)
        self.pending: Job | None = None
        self.wake = asyncio.Event()
        self.send_lock = asyncio.Lock()
        self.frames_received = 0
        self.frames_dropped = 0
        self.failures = 0  # frames failed since the last result (for the processing_error alert)
        self.last_failure = ("", "")

    async def send(self, message: dict[str, Any]) -> None:
        async with self.send_lock:
            await self.websocket.send_json(message)

    async def run(self) -> None:
        service = self.service
        await self.send(
            proto.event(
                "connected",
                {
                    "client_id": self.client_id,
                    "server_time": proto.now_ms(),
                    "model": service.model_name,
                    "heads": service.heads.available(),
                    "default_heads": [h.name for h in service.select_heads(None)],
                    "version": __version__,
                    "max_frame_bytes": self.settings.max_frame_bytes,
                    "max_message_bytes": self.settings.ws_max_message_bytes,
                    "crowd_levels": list(self.settings.crowd_levels),
                    "crowd_capacity": self.settings.crowd_capacity,
                    "crowd_threshold": self.settings.crowd_threshold,
                    "alert_cooldown": self.settings.alert_cooldown,
                },
            )
        )
        worker = asyncio.create_task(self.work(), name=f"ws-{self.client_id}")
        try:
            await self.read()
        finally:
            worker.cancel()
            try:
                await worker
            except asyncio.CancelledError:
                pass
            except (WebSocketDisconnect, RuntimeError) as exc:  # its answer found the socket closed
                logger.debug("ws %s: answer not sent, socket closed (%r)", self.client_id, exc)

    # ------------------------------------------------------------------ reading
    async def read(self) -> None:
        limit = self.settings.ws_max_message_bytes
        frame_limit = self.settings.max_frame_chars + WS_ENVELOPE_BYTES
        while True:
            message = await self.websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            text, data = message.get("text"), message.get("bytes")
            size = message_bytes(text) if text is not None else len(data or b"")
            if size > limit:
                # Whatever server runs the app, a message over the limit is dropped unread and ends the socket:
                # what one socket holds stays bounded by WS_MAX_MESSAGE_BYTES.
                del text, data, message
                await close_with_error(
                    self.websocket,
                    "too_large",
                    f"message of {size} bytes, over WS_MAX_MESSAGE_BYTES={limit}",
                    CloseCode.MESSAGE_TOO_BIG,
                    {"ws_max_message_bytes": limit, "max_frame_bytes": self.settings.max_frame_bytes},
                )
                return
            if text is None:
                await self.send(
                    proto.error_message(
                        "bad_message",
                        'send JSON text messages; a frame goes as base64 in "frame" (binary messages are not read)',
                    )
                )
            elif size > frame_limit:  # under the message limit but past any frame MAX_UPLOAD_MB allows: not parsed
                await self.send(
                    proto.error_message(
                        "too_large",
                        f"the message is over the {frame_limit} characters a frame of MAX_UPLOAD_MB="
                        f"{self.settings.max_upload_mb:g} takes",
                        {"max_frame_bytes": self.settings.max_frame_bytes},
                    )
                )
            else:
                await self.handle(text)

    async def handle(self, text: str) -> None:
        incoming: Incoming | None = None
        try:
            obj = (
                proto.parse_json(text)
                if len(text) <= INLINE_JSON_CHARS
                else await in_thread(proto.parse_json, text, answered=ANSWERED)
            )
            incoming = proto.parse_message(obj)
            if incoming.name in proto.FRAME_MESSAGES:
                self.enqueue(self.job(incoming))
            else:
                await self.send(await self.answer(incoming))
        except ProtocolError as exc:
            await self.send(
                proto.error_message(exc.code, exc.message, exc.details, incoming.reply_type if incoming else None)
            )
        except OceanoError as exc:
            await self.send(
                proto.error_message(proto.error_code(exc), exc.message, {}, incoming.reply_type if incoming else None)
            )

    def job(self, incoming: Incoming) -> Job:
        body = incoming.body
        if incoming.name == "predict":
            text, options = proto.frame_text(body, self.settings, ("image", "frame")), None
        else:
            text, options = proto.frame_text(body, self.settings), proto.frame_options(body, self.settings)
        self.frames_received += 1
        self.stats.total_frames_received += 1
        return Job(incoming, text, options, proto.client_timestamp(body), self.frames_received)

    def enqueue(self, job: Job) -> None:
        """The newest frame waits; the one it replaces is dropped and counted."""
        if self.pending is not None:
            self.frames_dropped += 1
            self.stats.total_frames_dropped += 1
        self.pending = job
        self.wake.set()

    async def answer(self, incoming: Incoming) -> dict[str, Any]:
        """Messages without a frame, answered at once."""
        name, stats = incoming.name, self.stats
        if name == "emotions":
            return proto.emotions(self.analyzer.emotion_model())
        if name == "model_info":
            return proto.model_info(self.analyzer.emotion_model(), detector=self.service.model_name)
        if name == "health":
            app_state = self.websocket.app.state
            healthy = not getattr(app_state, "shutting_down", False) and await run_in_threadpool(
                self.service.store_healthy
            )
            return {
                "type": "health",
                "status": "healthy" if healthy else "unhealthy",
                "service": proto.SERVICE_NAME,
                "version": __version__,
                "model": self.service.model_name,
                "model_loaded": True,
                "clients_connected": stats.active_connections,
                "timestamp": time.time(),
            }
        if name in ("stats", "get_stats"):
            if incoming.envelope is Envelope.EVENT:
                return proto.event("stats", stats.snapshot())
            return {"type": "stats", "status": "success", "stats": stats.snapshot()}
        if name == "ping":
            if incoming.envelope is Envelope.EVENT:
                return proto.event("pong", {"server_time": proto.now_ms()})
            return {"type": "pong", "status": "success", "timestamp": time.time()}
        if name == "auth":  # the socket is authorized already (authorize_socket): nothing more to check
            return {"type": "auth", "status": "success", "message": "this socket is authorized already"}
        raise ProtocolError("unknown_command", f"unknown command {name!r}")  # parse_message lets none through

    # ------------------------------------------------------------------ processing
    async def work(self) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            job, self.pending = self.pending, None
            if job is not None:
                await self.process(job)

    async def process(self, job: Job) -> None:
        started = time.perf_counter()
        reply_type = job.incoming.reply_type
        options = job.options

        def work(ticket: Ticket | None) -> FrameResult | Prediction | None:
            data = proto.decode_base64(job.text)
            if options is None:
                return self.analyzer.predict(data, ticket)
            return self.analyzer.process(data, options, ticket)

        try:
            # A busy engine answers `busy` at once: no queue of frames. The socket's reader goes on meanwhile.
            outcome = await engine_call(
                self.service, 1, work, timeout=self.settings.request_timeout, what="the frame", answered=ANSWERED
            )
        except ProtocolError as exc:
            await self.failed(exc.code, exc.message, exc.details, reply_type)
            return
        except OceanoError as exc:
            details = {"retry_after": exc.retry_after} if isinstance(exc, EngineBusy) else {}
            await self.failed(proto.error_code(exc), exc.message, details, reply_type)
            return
        except Exception:  # a bug must not end the socket silently
            logger.exception("frame %d of %s failed", job.frame_id, self.client_id)
            await self.failed("internal", "the frame could not be processed (internal error, logged)", {}, reply_type)
            return
        seconds = time.perf_counter() - started
        self.stats.observe(seconds, prediction=job.options is None)
        if isinstance(outcome, FrameResult):
            await self.send(self.result(job, outcome, seconds))
        else:
            await self.send(
                proto.prediction(
                    outcome,
                    model=self.analyzer.emotion_model(),
                    processing_ms=seconds * 1e3,
                    frames_dropped=self.frames_dropped,
                )
            )

    def result(self, job: Job, result: FrameResult, seconds: float) -> dict[str, Any]:
        assert job.options is not None
        alerts = [
            crowd_alert(result.crowd.face_count, job.options.crowd_threshold),
            connection_alert(self.stats.active_connections, self.settings.max_concurrent_connections),
        ]
        if self.failures:
            alerts.append(processing_alert(self.failures, *self.last_failure))
            self.failures = 0
        sent = self.throttle.admit(alerts)
        self.stats.total_alerts += len(sent)
        return proto.detection_result(
            result,
            alerts=sent,
            frames_dropped=self.frames_dropped,
            processing_ms=seconds * 1e3,
            timestamp=job.timestamp,
            frame_id=job.frame_id,
        )

    async def failed(self, code: str, message: str, details: dict[str, Any], reply_type: str | None) -> None:
        self.stats.total_frames_failed += 1
        self.failures += 1
        self.last_failure = (code, message)
        await self.send(proto.error_message(code, message, details, reply_type))


@router.websocket("/ws")
@router.websocket("/")  # where the emotion service's clients connect (GET / is still the HTML page)
async def realtime_socket(websocket: WebSocket) -> None:
    state = websocket.app.state
    settings: Settings = state.settings
    stats: RealtimeStats = state.realtime_stats
    offered = websocket.scope.get("subprotocols") or []
    await websocket.accept(subprotocol=SUBPROTOCOL if SUBPROTOCOL in offered else None)
    service: FaceServiceApi | None = getattr(state, "service", None)
    if service is None or getattr(state, "shutting_down", False):
        await close_with_error(
            websocket,
            "shutting_down",
            "the service is shutting down; reconnect once it is back",
            CloseCode.SERVICE_RESTART,
        )
        return
    limit = settings.max_concurrent_connections
    try:
        identity = await authorize_socket(websocket, stats)
        if stats.active_connections >= limit:
            stats.rejected_connections += 1
            raise SocketRefused(
                "connection_limit",
                f"too many connections: the service serves {limit} at once (MAX_CONCURRENT_CONNECTIONS); retry later",
                CloseCode.TRY_AGAIN_LATER,
                {"max_concurrent_connections": limit},
            )
    except SocketRefused as refused:
        await close_with_error(websocket, refused.code, refused.message, refused.close_code, refused.details)
        return
    except WebSocketDisconnect:
        return
    stats.active_connections += 1  # no await since the check: the limit holds however many connect at once
    try:
        stats.total_connections += 1
        connection = Connection(websocket, service=service, settings=settings, stats=stats)
        logger.info("ws %s connected (%s, %d active)", connection.client_id, identity, stats.active_connections)
        await connection.run()
        logger.info(
            "ws %s closed: %d frames, %d dropped",
            connection.client_id,
            connection.frames_received,
            connection.frames_dropped,
        )
    except WebSocketDisconnect:
        pass
    finally:
        stats.active_connections -= 1
        heap_trimmer.soon()  # what its messages took goes back to the system, not only to glibc's arenas


async def close_with_error(
    websocket: WebSocket, code: str, message: str, close_code: int, details: dict[str, Any] | None = None
) -> None:
    """An error event, then the close with a reason (at most 123 bytes by the protocol)."""
    with suppress(WebSocketDisconnect, RuntimeError):
        await websocket.send_json(proto.error_message(code, message, details))
        await websocket.close(close_code, message.encode()[:123].decode(errors="ignore"))


class StatsOut(BaseModel):
    active_connections: int = Field(description="WebSockets open now")
    total_frames_processed: int = Field(description="frames and predictions answered with a result")
    total_frames_dropped: int = Field(description="frames replaced by a newer one of the same socket")
    average_processing_time: float = Field(description="ms per processed frame, since start")
    p95_processing_time: float = Field(description="ms, over the latest 1000 processed frames")
    uptime: float = Field(description="seconds since the service started")
    total_connections: int
    rejected_connections: int = Field(description="turned away at MAX_CONCURRENT_CONNECTIONS")
    total_frames_received: int
    total_frames_failed: int = Field(description="answered with an error event")
    total_predictions: int
    total_alerts: int
    max_concurrent_connections: int


@router.get("/api/stats", response_model=StatsOut, responses=errors())
async def api_stats(request: Request) -> StatsOut:
    """Live statistics of the real-time socket (/ws): the crowd backend's keys, plus ours."""
    stats: RealtimeStats = request.app.state.realtime_stats
    return StatsOut(
        **stats.snapshot(), max_concurrent_connections=request.app.state.settings.max_concurrent_connections
    )
