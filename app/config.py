"""Settings: one object read from the environment, built in `create_app` (never at import)."""

from __future__ import annotations

import ipaddress
import os
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import limits
from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

# Matches per query face: the one bound of TOP_K and of the top_k request parameter.
MAX_TOP_K = 100
AUTO_WORKERS = "auto"
MAX_WORKERS = 64
# Bytes a WebSocket frame message holds besides its base64 frame (the JSON envelope, settings, timestamp).
WS_ENVELOPE_BYTES = 16 * 1024


class Quantization(StrEnum):
    """How vectors are compressed for the in-RAM search; originals stay on disk for rescoring."""

    INT8 = "int8"  # scalar int8: 4x smaller than float32 (the default)
    TURBO4 = "turbo4"  # TurboQuant 4 bits: 8x smaller
    TURBO2 = "turbo2"  # TurboQuant 2 bits: 16x smaller
    BINARY2 = "binary2"  # binary quantization, 2 bits per dimension: 16x smaller
    NONE = "none"  # search the original float32 vectors


class ReadConsistency(StrEnum):
    """Qdrant server/cluster: how many replicas a read asks (or a number, see Settings.qdrant_read_consistency)."""

    ALL = "all"
    MAJORITY = "majority"
    QUORUM = "quorum"


class ProviderChoice(StrEnum):
    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"


class CudnnConvAlgoSearch(StrEnum):
    """How the CUDA provider picks each convolution's algorithm, once per new input shape (onnxruntime's names)."""

    HEURISTIC = "HEURISTIC"  # cuDNN's heuristics: milliseconds per new shape
    DEFAULT = "DEFAULT"  # the default algorithm, no search
    EXHAUSTIVE = "EXHAUSTIVE"  # benchmark every algorithm (onnxruntime's default): seconds per new shape on a GPU


class ArenaExtendStrategy(StrEnum):
    """How the CUDA provider's memory arena grows (onnxruntime's names)."""

    NEXT_POWER_OF_TWO = "kNextPowerOfTwo"
    SAME_AS_REQUESTED = "kSameAsRequested"


class ReadAccess(StrEnum):
    OPEN = "open"  # search routes answer anyone (writes still need a key, or loopback while no key exists)
    KEY = "key"  # search routes need a key with the search (or admin) scope too


class QualityPolicy(StrEnum):
    """What indexing does with a face whose quality score is under QUALITY_MIN (README "Face quality")."""

    FLAG = "flag"  # index it, with quality_flagged: true in its payload
    REFUSE = "refuse"  # do not index it; the index answer says why, per face


class StandinLayout(StrEnum):
    """Which machine the stand-in engine (ENGINE_STANDIN) lays its work out for."""

    CPU = "cpu"  # this machine's own layout
    GPU = "gpu"  # a GPU's: detector batches on one canvas, uint8 detector input, padded chunks, the GPU's batch sizes


class LogFormat(StrEnum):
    TEXT = "text"
    JSON = "json"  # one JSON object per line


# Old name -> what replaced it, for the start-up error.
RENAMED_SETTINGS = {
    "det_batch": "DET_BATCH_SIZES, the detector's batch sizes (e.g. 1,4,16)",
    "rec_batch": "REC_BATCH_SIZES, the recognizer's and heads' batch sizes (e.g. 1,4,16,64)",
}

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def _items(value: str) -> list[str]:
    return [p.strip() for p in value.split(",") if p.strip()]


def _batch_sizes(value: Any, name: str) -> Any:
    """'1,4,16,64' -> (1, 4, 16, 64): sorted, repeats dropped."""
    if isinstance(value, str):
        parts = _items(value)
        if not all(p.isdigit() for p in parts):
            raise ValueError(f"{name} must be batch sizes separated by commas, e.g. 1,4,16,64")
        value = [int(p) for p in parts]
    if isinstance(value, list | tuple):
        if any(int(v) < 1 or int(v) > 4096 for v in value):
            raise ValueError(f"{name}: each batch size must be between 1 and 4096")
        value = tuple(sorted({int(v) for v in value}))
    return value


class Settings(BaseSettings):
    """Environment names match the README (HOST, PORT, QDRANT_URL, ...)."""

    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore", env_file=None)

    host: str = "0.0.0.0"
    port: int = Field(default=9100, ge=1, le=65535)

    # Vector store: empty QDRANT_URL means the embedded Qdrant Edge shard under QDRANT_PATH.
    qdrant_url: str = ""
    qdrant_api_key: str = ""
    qdrant_path: Path = Path("state/qdrant")
    # Server/cluster collections (new ones): shards, copies of each shard, replicas that must confirm a write.
    qdrant_shards: int = Field(default=1, ge=1)
    qdrant_replicas: int = Field(default=1, ge=1)
    qdrant_write_consistency: int = Field(default=1, ge=1)
    # Server/cluster reads: a number of replicas ("1": the fastest answer), or all / majority / quorum.
    qdrant_read_consistency: str = "1"
    qdrant_timeout: int = Field(default=30, ge=1)
    collection_name: str = Field(default="faces", pattern=r"^[A-Za-z0-9_\-]{1,128}$")

    # Models: MODEL_NAME=auto takes antelopev2 from MODEL_ROOT when present, else the bundled pack.
    model_name: str = "auto"
    model_root: Path = Path("~/.insightface/models")
    model_download: bool = False
    det_size: Annotated[tuple[int, int], NoDecode] = (640, 640)
    det_threshold: float = Field(default=0.5, gt=0.0, lt=1.0)
    # Faces kept per image (the best-scored ones): bounds the recognizer's and the heads' work per request.
    max_faces: int = Field(default=128, ge=1, le=4096)
    providers: ProviderChoice = ProviderChoice.AUTO
    # Benchmarks only: every ONNX run answers the outputs recorded at its input shape's first run (see
    # app.engine.runtime.ReplaySession), so a benchmark measures everything but inference. Logged loudly.
    engine_standin: bool = False
    # With ENGINE_STANDIN, `gpu` lays the work out as on a GPU (batch sizes, one detector canvas, uint8 detector
    # input, padding), so a CPU machine measures the CPU work a GPU machine's processes do per search.
    engine_standin_layout: StandinLayout = StandinLayout.CPU
    # On a GPU the detector takes uint8 pixels and casts, normalises and transposes them inside its graph: a quarter
    # of the bytes to copy to the device and no blob to build on the CPU (app.engine.graph). Off: the float blob.
    gpu_image_input: bool = True
    ort_threads: int = Field(default=0, ge=0)  # 0: onnxruntime picks (all cores)
    # The only batch sizes each model runs at (app.engine.model): a call's images or faces are cut into chunks of
    # these sizes, every one of them run once at start-up. Empty: DET_BATCH_SIZES 1 on the CPU (batching the
    # detector does not help there), 16 on a GPU; REC_BATCH_SIZES (the recognizer and the heads) 1,4,16 on
    # the CPU (a CPU run costs per face: larger batches gain nothing and cost warm-up), 64 on a GPU (one size per
    # session there: onnxruntime's CUDA provider pays again whenever a session's input shape changes).
    det_batch_sizes: Annotated[tuple[int, ...], NoDecode] = ()
    rec_batch_sizes: Annotated[tuple[int, ...], NoDecode] = ()
    # The CUDA provider (PROVIDERS=auto/cuda on a GPU): set, not onnxruntime's defaults (README "GPU").
    cuda_device_id: int = Field(default=0, ge=0)
    cudnn_conv_algo_search: CudnnConvAlgoSearch = CudnnConvAlgoSearch.HEURISTIC
    gpu_mem_limit_mb: int = Field(default=0, ge=0)  # the CUDA arena's cap; 0: no cap
    arena_extend_strategy: ArenaExtendStrategy = ArenaExtendStrategy.NEXT_POWER_OF_TWO
    # TensorRT before CUDA when onnxruntime offers it; its engines are cached under STATE_DIR/tensorrt.
    tensorrt: bool = False
    # Concurrent requests queued while the engine is busy are run together, up to this many images per call.
    request_batch: int = Field(default=32, ge=1)
    heads: str = "emotion"  # comma-separated heads run by default on /api/analyze and the HTML page
    heads_dir: Path | None = None  # user heads: an ONNX file plus a .json (or .yaml) spec each

    # Face quality (README "Face quality"): a face scoring under QUALITY_MIN is flagged, or refused (QUALITY_POLICY).
    # 0.3: on the eval set no original photo's face is under it, every face blurred past recognition is.
    quality_min: float = Field(default=0.3, ge=0.0, le=1.0)
    quality_policy: QualityPolicy = QualityPolicy.FLAG

    # Search defaults.
    top_k: int = Field(default=10, ge=1, le=MAX_TOP_K)
    sim_threshold: float = Field(default=0.0, ge=-1.0, le=1.0)
    hnsw_ef: int = Field(default=128, ge=1)
    # Quantized search: candidates rescored on the original vectors = limit x oversampling.
    oversampling: float = Field(default=2.0, ge=1.0, le=16.0)
    rescore: bool = True
    cluster_min_faces: int = Field(default=3, ge=1, le=64)  # clusters of unknown faces: README "Clusters"
    cluster_max_distance: float = Field(default=0.6, gt=0.0, lt=2.0)  # cosine distance (1 - score)

    # How NEW collections are built (docs/SCALE.md has the measurements behind the defaults). A collection keeps
    # the parameters it was created with; to change them, export it and import it into a new collection.
    hnsw_m: int = Field(default=16, ge=4, le=128)
    hnsw_ef_construct: int = Field(default=100, ge=4, le=4096)
    quantization: Quantization = Quantization.INT8
    # Original vectors memory-mapped from disk (read for rescoring); the quantized copy is always in RAM.
    vectors_on_disk: bool = True
    # Embedded store: unindexed points that make a background index build due (0: builds only when asked).
    index_threshold: int = Field(default=20000, ge=0)
    # Embedded store: the largest segment an index build may make, in points (0: Qdrant's own sizing). An index
    # build holds the whole process (Qdrant Edge keeps the GIL), and its time grows with the segment it builds.
    max_segment_points: int = Field(default=20000, ge=0)
    # Embedded store: the number of segments the optimizer merges towards (0: Qdrant's own, from the CPUs).
    segment_number: int = Field(default=0, ge=0, le=1024)
    # Embedded store: threads one search uses (Qdrant Edge's max_search_threads; 0: its own pool over the cores). A
    # search holds the GIL either way (bench/store_gil.py), and in the caller's thread it costs less wall and CPU
    # time than handed to the pool (docs/PERFORMANCE.md).
    search_threads: int = Field(default=1, ge=0, le=1024)

    # Admission control around the ONNX sessions.
    gpu_concurrency: int = Field(default=1, ge=1)
    gpu_acquire_timeout: float = Field(default=5.0, gt=0)
    request_timeout: float = Field(default=30.0, gt=0)
    # Seconds a refusal at the door (503) is held before it is sent: paces clients that retry at once.
    shed_delay: float = Field(default=0.25, ge=0.0, le=5.0)

    state_dir: Path = Path("state")  # files: the state (SQLite files, calibration) and, below, thumbnails
    thumbs_dir: Path = Path("state/thumbs")
    # POST /api/ingest makes the service read a path: comma-separated folders it may read from (empty: refused).
    ingest_roots: str = ""
    # Seconds an ingest run waits for one file's bytes (a hung network mount): then the file is recorded failed.
    ingest_file_timeout: float = Field(default=30.0, gt=0)
    # Writes are refused (507) while the embedded store's disk has less free space than this.
    min_free_disk_mb: int = Field(default=256, ge=0)
    max_upload_mb: float = Field(default=20.0, gt=0)
    max_megapixels: float = Field(default=50.0, gt=0)  # one image, checked from its header
    # All images of one request together (the batch endpoint), from their headers, before any is decoded.
    max_request_megapixels: float = Field(default=400.0, gt=0)
    # Pixels being decoded at once in the whole process (transient full-size decodes; ~3-6 bytes each).
    decode_megapixels: float = Field(default=100.0, gt=0)
    thumb_size: int = Field(default=128, ge=32, le=512)

    # Real time (/ws, /live). Sockets served at once: the one over the limit is closed (code 1013) with the reason.
    max_concurrent_connections: int = Field(default=64, ge=1, le=100_000)
    # The largest WebSocket message, in bytes as received (python -m app turns permessage-deflate off, so that is
    # also its size in memory): a base64 frame of up to WS_MAX_MESSAGE_BYTES - 16 KiB characters (3 MB of JPEG
    # by default, a 4096 px frame) plus its JSON. A bigger message closes the socket (code 1009) unread.
    ws_max_message_bytes: int = Field(default=4 * 1024 * 1024, ge=256 * 1024, le=256 * 1024 * 1024)
    # AUTH_READS=key, socket without a key in its handshake: seconds it has to send {"command": "auth", ...}, and
    # how many may wait for theirs at once (past it, a newcomer takes the place of the one waiting longest). They
    # do not count against MAX_CONCURRENT_CONNECTIONS: a socket takes one of those places once its key is checked.
    ws_auth_timeout: float = Field(default=2.0, gt=0, le=60)
    ws_auth_pending: int = Field(default=16, ge=1, le=100_000)
    # Crowd levels from a frame's face count: the highest counts of `low`, `medium` and `high` (0 is `empty`,
    # past the last `very_high`). Default 2,5,10: 1-2 low, 3-5 medium, 6-10 high, 11+ very_high.
    crowd_levels: Annotated[tuple[int, int, int], NoDecode] = (2, 5, 10)
    # density_score = min(1, face count / CROWD_CAPACITY): the share of a scene's capacity in use.
    crowd_capacity: int = Field(default=20, ge=1)
    # A frame with more faces than this raises a crowd_warning alert (a frame's own settings may differ; 0: none).
    crowd_threshold: int = Field(default=10, ge=0)
    # Seconds before a connection gets the same kind of alert again (unless its level rises).
    alert_cooldown: float = Field(default=10.0, ge=0, le=86_400)
    # Frames are reduced to this long side before detection (a frame's settings may ask for another `max_side`):
    # detection costs about the square of it; smaller faces are found at larger sides.
    frame_max_side: int = Field(default=640, ge=32, le=4096)
    # The same for `predict`, which reads the largest face only: a quarter of the detector's work at 320.
    predict_max_side: int = Field(default=320, ge=32, le=4096)

    # Processes of `python -m app`: 1 = one process serves HTTP and runs the engine (the default); N > 1 = one core
    # process owns the engine, the request batcher, the store and ingest jobs, and N HTTP worker processes parse,
    # decode and answer (app.core); auto = min(8, cores - 2) when CUDA is in use, else 1.
    workers: str = "1"

    # uvicorn (python -m app). Connections and tasks it serves at once (past it: a bare 503). Memory is bounded by
    # admission control and the upload limits, not by this; it only stops an unbounded pile of idle sockets.
    uvicorn_limit_concurrency: int | None = 1024
    uvicorn_backlog: int = 2048
    # Slow clients (app.api.server, app.api.errors.BodyDeadline). Seconds a connection has to send a whole request
    # head (408 and closed past it): without it, idle half-sent requests hold the connection slots for good.
    header_timeout: float = Field(default=10.0, gt=0, le=3600)
    # Seconds a request has to send its whole body, from the end of its head (408 and closed past it): 120 s
    # takes a 20 MB upload at 1.4 Mbit/s. REQUEST_TIMEOUT starts once the body is in.
    body_timeout: float = Field(default=120.0, gt=0, le=3600)
    # Connections (WebSockets included) open at once from one client address; the one over it is answered 429 and
    # closed. Peers in FORWARDED_ALLOW_IPS are proxies and are not counted (they bound their clients). 0: off.
    max_client_connections: int = Field(default=64, ge=0, le=100_000)
    log_level: str = "info"
    log_format: LogFormat = LogFormat.TEXT

    # Access (README: Security). API keys live in STATE_DIR/keys.sqlite3 (python -m app.keys); while none exists,
    # writes are accepted from loopback clients only.
    auth_reads: ReadAccess = ReadAccess.OPEN
    # Per key name, or per client address without a key, on every route but /health and /metrics: e.g.
    # "20/second" or "20/second;600/minute" (all must hold). Empty: off.
    rate_limit: str = ""
    # Peers (addresses or networks, comma-separated; "*": any) whose X-Forwarded-For / X-Forwarded-Proto name the
    # client. Empty: none, the peer is the client.
    forwarded_allow_ips: str = "127.0.0.1,::1"
    # Browser origins allowed to call the API from their pages (comma-separated, e.g. https://app.example.org;
    # "*": any). Empty: none (same-origin only).
    cors_origins: str = ""

    @field_validator("det_size", mode="before")
    @classmethod
    def _parse_det_size(cls, value: Any) -> Any:
        if isinstance(value, str):
            parts = [p for p in value.replace("x", ",").split(",") if p.strip()]
            if len(parts) == 1:
                parts = parts * 2
            if len(parts) != 2:
                raise ValueError("DET_SIZE must be 'W,H' (e.g. 640,640)")
            value = (int(parts[0]), int(parts[1]))
        return value

    @field_validator("det_size")
    @classmethod
    def _check_det_size(cls, value: tuple[int, int]) -> tuple[int, int]:
        if any(v < 64 or v > 4096 or v % 32 for v in value):
            raise ValueError("DET_SIZE sides must be multiples of 32 between 64 and 4096")
        return value

    @field_validator("det_batch_sizes", mode="before")
    @classmethod
    def _parse_det_batch_sizes(cls, value: Any) -> Any:
        return _batch_sizes(value, "DET_BATCH_SIZES")

    @field_validator("rec_batch_sizes", mode="before")
    @classmethod
    def _parse_rec_batch_sizes(cls, value: Any) -> Any:
        return _batch_sizes(value, "REC_BATCH_SIZES")

    @field_validator("crowd_levels", mode="before")
    @classmethod
    def _parse_crowd_levels(cls, value: Any) -> Any:
        if isinstance(value, str):
            parts = [p.strip() for p in value.split(",") if p.strip()]
            if len(parts) != 3 or not all(p.isdigit() for p in parts):
                raise ValueError("CROWD_LEVELS must be three face counts 'LOW,MEDIUM,HIGH' (e.g. 2,5,10)")
            value = tuple(int(p) for p in parts)
        return value

    @field_validator("crowd_levels")
    @classmethod
    def _check_crowd_levels(cls, value: tuple[int, int, int]) -> tuple[int, int, int]:
        if not 1 <= value[0] < value[1] < value[2]:
            raise ValueError("CROWD_LEVELS must rise strictly from at least 1 (e.g. 2,5,10)")
        return value

    @field_validator("workers")
    @classmethod
    def _check_workers(cls, value: str) -> str:
        value = value.strip().lower()
        if value != AUTO_WORKERS and not (value.isdigit() and 1 <= int(value) <= MAX_WORKERS):
            raise ValueError(f"WORKERS must be a number from 1 to {MAX_WORKERS}, or auto; got {value!r}")
        return value

    def worker_count(self, *, cuda: bool) -> int:
        """HTTP worker processes; 1: no core process, one process does everything."""
        if self.workers != AUTO_WORKERS:
            return int(self.workers)
        return max(1, min(8, (os.cpu_count() or 1) - 2)) if cuda else 1

    @field_validator("uvicorn_limit_concurrency", mode="before")
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        return None if value in ("", None) else value

    @field_validator("rate_limit")
    @classmethod
    def _check_rate_limit(cls, value: str) -> str:
        if value.strip():
            try:
                limits.parse_many(value)
            except ValueError as exc:
                raise ValueError(f"RATE_LIMIT must be like '20/second' or '20/second;600/minute': {exc}") from None
        return value.strip()

    @field_validator("forwarded_allow_ips")
    @classmethod
    def _check_forwarded(cls, value: str) -> str:
        for item in _items(value):
            if item != "*":
                try:
                    ipaddress.ip_network(item, strict=False)
                except ValueError:
                    raise ValueError(f"FORWARDED_ALLOW_IPS: {item!r} is not an address or a network (or '*')") from None
        return value

    @field_validator("cors_origins")
    @classmethod
    def _check_origins(cls, value: str) -> str:
        for item in _items(value):
            host = item.split("://", 1)[-1].rstrip("/")
            if item != "*" and not (item.startswith(("http://", "https://")) and host and "/" not in host):
                raise ValueError(f"CORS_ORIGINS: {item!r} is not an origin like https://app.example.org (no path)")
        return value

    @field_validator("qdrant_read_consistency")
    @classmethod
    def _check_read_consistency(cls, value: str) -> str:
        value = value.strip().lower()
        if value in {c.value for c in ReadConsistency} or (value.isdigit() and int(value) >= 1):
            return value
        raise ValueError("QDRANT_READ_CONSISTENCY must be a number of replicas (1, 2, ...), all, majority or quorum")

    @model_validator(mode="after")
    def _check_collection_shape(self) -> Settings:
        if self.qdrant_write_consistency > self.qdrant_replicas:
            raise ValueError(
                f"QDRANT_WRITE_CONSISTENCY ({self.qdrant_write_consistency}) cannot exceed "
                f"QDRANT_REPLICAS ({self.qdrant_replicas}): writes could never be confirmed"
            )
        if self.qdrant_read_consistency.isdigit() and int(self.qdrant_read_consistency) > self.qdrant_replicas:
            raise ValueError(
                f"QDRANT_READ_CONSISTENCY ({self.qdrant_read_consistency}) cannot exceed "
                f"QDRANT_REPLICAS ({self.qdrant_replicas})"
            )
        if self.max_segment_points and self.max_segment_points < self.index_threshold:
            if "max_segment_points" in self.model_fields_set:
                raise ValueError(
                    f"MAX_SEGMENT_POINTS ({self.max_segment_points}) must be 0 or at least "
                    f"INDEX_THRESHOLD ({self.index_threshold})"
                )
            self.max_segment_points = self.index_threshold  # a larger INDEX_THRESHOLD set alone keeps working
        return self

    @model_validator(mode="after")
    def _refuse_renamed(self) -> Settings:
        """Unknown names are ignored: a deployment still setting a renamed one would silently get the default."""
        old = sorted(name for name in os.environ if name.lower() in RENAMED_SETTINGS)
        if old:
            raise ValueError("renamed settings: " + "; ".join(f"{n} is now {RENAMED_SETTINGS[n.lower()]}" for n in old))
        return self

    @model_validator(mode="after")
    def _expand_paths(self) -> Settings:
        self.model_root = self.model_root.expanduser()
        if self.heads_dir is not None:
            self.heads_dir = self.heads_dir.expanduser()
        return self

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def max_frame_chars(self) -> int:
        """The longest base64 text of one WebSocket frame: MAX_UPLOAD_MB encoded (4 characters per 3 bytes), and
        room for the rest of its message under WS_MAX_MESSAGE_BYTES."""
        return min(-(-self.max_upload_bytes // 3) * 4, self.ws_max_message_bytes - WS_ENVELOPE_BYTES)

    @property
    def max_frame_bytes(self) -> int:
        """The largest image one WebSocket frame may carry (max_frame_chars decoded)."""
        return self.max_frame_chars // 4 * 3

    @property
    def ingest_root_paths(self) -> list[Path]:
        return [Path(p.strip()).expanduser().resolve() for p in self.ingest_roots.split(",") if p.strip()]

    @property
    def embedded(self) -> bool:
        return not self.qdrant_url

    @property
    def rate_limits(self) -> list[limits.RateLimitItem]:
        return limits.parse_many(self.rate_limit) if self.rate_limit else []

    @property
    def forwarded_networks(self) -> list[IpNetwork] | None:
        """The trusted proxies; None: any peer ("*")."""
        items = _items(self.forwarded_allow_ips)
        if "*" in items:
            return None
        return [ipaddress.ip_network(i, strict=False) for i in items]

    @property
    def cors_origin_list(self) -> list[str]:
        return [o.rstrip("/") for o in _items(self.cors_origins)]


PRIVATE_UMASK = 0o077


def private_files() -> None:
    """Every file this process makes is 0600 and every folder 0700, whoever starts it and with whatever umask:
    face crops, the collection's segments and the state databases are nobody else's business. Called once by
    each command (`python -m app`, `app.ingest`, `app.keys`, `app.collection`) before it opens anything; files made
    earlier keep their modes (`chmod -R go-rwx` them)."""
    os.umask(PRIVATE_UMASK)
