"""ONNX Runtime sessions (providers chosen in one place) and the inference gate."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from app.config import ProviderChoice, Settings, StandinLayout
from app.errors import EngineBusy, ModelPackError

logger = logging.getLogger(__name__)

# Preference order; what onnxruntime offers is filtered against it.
_PROVIDER_ORDER = ("CUDAExecutionProvider", "CPUExecutionProvider")
CPU_PROVIDER = "CPUExecutionProvider"
CUDA_PROVIDER = "CUDAExecutionProvider"
TENSORRT_PROVIDER = "TensorrtExecutionProvider"
# Not an onnxruntime provider: a marker in the provider list that makes create_session wrap each session in a
# ReplaySession (ENGINE_STANDIN=1, benchmarks only). It rides the list so that every model of the process gets it.
REPLAY_MARKER = "OceanoReplayStandIn"
# Input shapes a ReplaySession remembers (each costs one set of the model's outputs).
REPLAY_SHAPES = 256
# TensorRT's engines and timing cache, under STATE_DIR: built once per model and shape range, reused at restart.
TENSORRT_CACHE = "tensorrt"


def select_providers(choice: ProviderChoice, *, standin: bool = False, tensorrt: bool = False) -> list[str]:
    """The one place providers are chosen: names in preference order (REPLAY_MARKER first for the stand-in)."""
    providers = _select_providers(choice)
    if tensorrt and providers[0] == CUDA_PROVIDER:
        if TENSORRT_PROVIDER in ort.get_available_providers():
            providers = [TENSORRT_PROVIDER, *providers]
        else:
            logger.warning("TENSORRT=1 but onnxruntime offers no TensorrtExecutionProvider: CUDA only")
    return [REPLAY_MARKER, *providers] if standin else providers


def _select_providers(choice: ProviderChoice) -> list[str]:
    available = set(ort.get_available_providers())
    if choice is ProviderChoice.CPU:
        return [CPU_PROVIDER]
    if choice is ProviderChoice.CUDA:
        if CUDA_PROVIDER not in available:
            raise ModelPackError(
                "PROVIDERS=cuda but onnxruntime offers no CUDAExecutionProvider "
                f"(available: {sorted(available)}); install onnxruntime-gpu or set PROVIDERS=auto"
            )
        return [CUDA_PROVIDER, CPU_PROVIDER]
    return [p for p in _PROVIDER_ORDER if p in available]


def provider_options(provider: str, settings: Settings) -> dict[str, str]:
    """Each provider's options, from the settings (onnxruntime takes them as strings). CUDA's are set, never left
    to onnxruntime's defaults: its default EXHAUSTIVE convolution search costs 1-3 s per new input shape on a GPU."""
    if provider == CUDA_PROVIDER:
        options = {
            "device_id": str(settings.cuda_device_id),
            "cudnn_conv_algo_search": settings.cudnn_conv_algo_search.value,
            "arena_extend_strategy": settings.arena_extend_strategy.value,
        }
        if settings.gpu_mem_limit_mb:
            options["gpu_mem_limit"] = str(settings.gpu_mem_limit_mb * 1024 * 1024)
        return options
    if provider == TENSORRT_PROVIDER:
        cache = str(settings.state_dir / TENSORRT_CACHE)
        return {
            "device_id": str(settings.cuda_device_id),
            "trt_engine_cache_enable": "True",
            "trt_engine_cache_path": cache,
            "trt_timing_cache_enable": "True",
            "trt_timing_cache_path": cache,
        }
    return {}


@dataclass(frozen=True, slots=True)
class Runtime:
    """Where the ONNX sessions run: providers in preference order, each with its options, and the CPU threads.
    Every model of the process (face models and heads) is created from the same one (app.engine.model)."""

    providers: tuple[str, ...] = (CPU_PROVIDER,)
    options: tuple[dict[str, str], ...] = ({},)
    threads: int = 0  # intra-op threads; 0: onnxruntime picks (all cores)
    # Models that take a normalised image blob get uint8 pixels instead (app.engine.graph), on a GPU only.
    image_input: bool = False
    # The stand-in engine laid out as on a GPU (ENGINE_STANDIN_LAYOUT=gpu): every model acts as if on a GPU.
    gpu_layout: bool = False

    @classmethod
    def from_settings(cls, settings: Settings) -> Runtime:
        providers = select_providers(settings.providers, standin=settings.engine_standin, tensorrt=settings.tensorrt)
        if TENSORRT_PROVIDER in providers:
            (settings.state_dir / TENSORRT_CACHE).mkdir(parents=True, exist_ok=True)
        gpu_layout = settings.engine_standin and settings.engine_standin_layout is StandinLayout.GPU
        on_gpu = gpu_layout or bool({CUDA_PROVIDER, TENSORRT_PROVIDER} & set(providers))
        return cls(
            providers=tuple(providers),
            options=tuple(provider_options(p, settings) for p in providers),
            threads=settings.ort_threads,
            image_input=settings.gpu_image_input and on_gpu,
            gpu_layout=gpu_layout,
        )

    @property
    def standin(self) -> bool:
        return REPLAY_MARKER in self.providers

    def session_providers(self, profile: TensorrtProfile | None = None) -> list[tuple[str, dict[str, str]]]:
        """(provider, options) pairs for ort.InferenceSession, the stand-in marker left out. `profile`: the input
        shapes a model runs at, so TensorRT builds one engine for the whole range instead of one per new shape."""
        pairs = []
        for name, options in zip(self.providers, self.options, strict=True):
            if name == REPLAY_MARKER:
                continue
            if name == TENSORRT_PROVIDER and profile is not None:
                options = {**options, **profile.options()}
            pairs.append((name, options))
        return pairs

    def info(self) -> dict[str, Any]:
        """The providers and their options in force (/status)."""
        return {
            "providers": [p for p in self.providers if p != REPLAY_MARKER],
            "provider_options": {p: o for p, o in zip(self.providers, self.options, strict=True) if p != REPLAY_MARKER},
            "threads": self.threads,
            "standin": self.standin,
            "image_input": self.image_input,
            "gpu_layout": self.gpu_layout,
        }


@dataclass(frozen=True, slots=True)
class TensorrtProfile:
    """The smallest, largest and most common input shape of one model (TensorRT's optimisation profile)."""

    input_name: str
    smallest: tuple[int, ...]
    largest: tuple[int, ...]

    def options(self) -> dict[str, str]:
        def shape(dims: tuple[int, ...]) -> str:
            return f"{self.input_name}:{'x'.join(str(d) for d in dims)}"

        return {
            "trt_profile_min_shapes": shape(self.smallest),
            "trt_profile_max_shapes": shape(self.largest),
            "trt_profile_opt_shapes": shape(self.largest),
        }


def create_session(
    model: Path | bytes, *, runtime: Runtime, name: str = "", profile: TensorrtProfile | None = None
) -> ort.InferenceSession:
    """A session on the runtime's providers with their options; wrapped in a ReplaySession for the stand-in."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    if runtime.threads:
        options.intra_op_num_threads = runtime.threads
    source: Any = str(model) if isinstance(model, Path) else model
    try:
        session = ort.InferenceSession(source, sess_options=options, providers=runtime.session_providers(profile))
    except Exception as exc:  # onnxruntime raises several unrelated types
        raise ModelPackError(f"cannot load ONNX model {name or str(model)[:80]}: {exc}") from exc
    return ReplaySession(session, name=name) if runtime.standin else session


class ReplaySession:
    """The stand-in engine (ENGINE_STANDIN=1, for benchmarks): the first run at each input shape runs the real
    session and keeps its outputs; later runs at that shape answer those outputs at once. What a service reaches
    with it is the ceiling set by everything but inference (HTTP, decode, pre/post-processing, search), the one a
    GPU machine meets. Its answers are those of the first input of each shape: never for real use."""

    def __init__(self, real: ort.InferenceSession, *, name: str) -> None:
        self.real = real  # warm-up runs here: zeros must not become the recorded answers
        self._name = name
        self._outputs: dict[tuple[Any, ...], list[Any]] = {}
        self._lock = threading.Lock()
        self.real_runs = 0
        self.replayed_runs = 0
        logger.warning("ENGINE STAND-IN: %s answers recorded outputs, one per input shape; not for real use", name)

    def get_inputs(self) -> Any:
        return self.real.get_inputs()

    def get_outputs(self) -> Any:
        return self.real.get_outputs()

    def get_providers(self) -> list[str]:
        return self.real.get_providers()

    def run(self, output_names: list[str] | None, feed: dict[str, Any], *args: Any) -> list[Any]:
        key = (tuple(output_names or ()), *((k, v.shape, str(v.dtype)) for k, v in sorted(feed.items())))
        with self._lock:
            recorded = self._outputs.get(key)
        if recorded is not None:
            self.replayed_runs += 1
            return list(recorded)
        outputs = self.real.run(output_names, feed, *args)
        with self._lock:
            self.real_runs += 1
            if len(self._outputs) < REPLAY_SHAPES:
                self._outputs[key] = self._rows_like_first(outputs, feed)
        return list(outputs)

    @staticmethod
    def _rows_like_first(outputs: list[Any], feed: dict[str, Any]) -> list[Any]:
        """The recorded outputs with every row of a batch made the first one's. The first run at a batch shape
        is often one image (or face) and padding: replayed as they were, the padding rows' answers (no face)
        would stand for every later image but the first, and a benchmark of batches would measure faceless
        requests."""
        rows = {v.shape[0] for v in feed.values() if getattr(v, "ndim", 0)}
        if len(rows) != 1 or (batch := rows.pop()) < 2:
            return outputs
        return [
            np.ascontiguousarray(np.broadcast_to(o[:1], o.shape))
            if isinstance(o, np.ndarray) and o.ndim and o.shape[0] == batch
            else o
            for o in outputs
        ]


def dynamic_batch_model(model: onnx.ModelProto) -> tuple[bool, bool]:
    """Some exports (ArcFace, Keras heads) declare their outputs with batch 1 although the input's batch axis is
    dynamic: rewrite the declared axis in place, once at load, so batched runs are legal (no shape warnings).
    Returns (batched: the input takes any batch, changed: the model was rewritten)."""
    first = model.graph.input[0].type.tensor_type.shape.dim[0]
    if first.HasField("dim_value") and first.dim_value == 1:
        return False, False
    changed = False
    for out in model.graph.output:
        dim = out.type.tensor_type.shape.dim[0]
        if dim.HasField("dim_value"):
            dim.ClearField("dim_value")
            dim.dim_param = "batch"
            changed = True
    return True, changed


def uses_gpu(session: ort.InferenceSession) -> bool:
    return session.get_providers()[0] != "CPUExecutionProvider"


class InferenceGate:
    """Bounds concurrent use of the ONNX sessions; a caller that cannot get in within `timeout` is refused.

    A threading semaphore (not an asyncio one) because both request handlers (through the thread pool)
    and background ingest threads pass through it.
    """

    def __init__(self, concurrency: int, timeout: float) -> None:
        self._semaphore = threading.BoundedSemaphore(concurrency)
        self.concurrency = concurrency
        self.timeout = timeout
        self._lock = threading.Lock()
        self._in_use = 0
        self._waiting = 0

    @contextmanager
    def acquire(self, timeout: float | None = None) -> Iterator[None]:
        wait = self.timeout if timeout is None else timeout
        with self._lock:
            self._waiting += 1
        try:
            acquired = self._semaphore.acquire(timeout=wait)
        finally:
            with self._lock:
                self._waiting -= 1
        if not acquired:
            raise EngineBusy(
                f"the inference engine is busy (waited {wait:.1f}s for one of {self.concurrency} slots); retry shortly",
                retry_after=max(1.0, wait),
            )
        with self._lock:
            self._in_use += 1
        try:
            yield
        finally:
            with self._lock:
                self._in_use -= 1
            self._semaphore.release()

    @property
    def in_use(self) -> int:
        return self._in_use

    @property
    def waiting(self) -> int:
        return self._waiting
