"""WORKERS > 1: one core process owns the engine, the request batcher, the store, ingest jobs and the rate
limits, and serves them over a Unix socket (CoreServer); N HTTP worker processes parse HTTP and multipart, decode
images and build answers, calling the core through a FaceServiceApi of the same surface (RemoteFaceService).
The ONNX sessions and the embedded store keep one owner; the CPU work around them spreads over the cores."""

from app.core.client import (
    CoreClient,
    CoreGone,
    RemoteFaceService,
    RemoteJobs,
    RemotePeople,
    RemoteRateLimiter,
    RemoteTicket,
)
from app.core.peers import SharedPeerCounts
from app.core.server import CoreServer
from app.core.wire import Catalogue, CoreAddress, EstimateBoard
from app.core.worker import WorkerServices, connect_core

__all__ = [
    "Catalogue",
    "CoreAddress",
    "CoreClient",
    "CoreGone",
    "CoreServer",
    "EstimateBoard",
    "RemoteFaceService",
    "RemoteJobs",
    "RemotePeople",
    "RemoteRateLimiter",
    "RemoteTicket",
    "SharedPeerCounts",
    "WorkerServices",
    "connect_core",
]
