"""ONNX Runtime sessions (providers chosen in one place) and the inference gate."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import onnx
import onnxruntime as ort

from app.config import ProviderChoice
from app.errors import EngineBusy, ModelPackError

logger = logging.getLogger(__name__)

# Preference order; what onnxruntime offers is filtered against it.
_PROVIDER_ORDER = ("CUDAExecutionProvider", "CPUExecutionProvider")
# Not an onnxruntime provider: a marker in the provider list that makes create_session wrap each session in a
# ReplaySession (ENGINE_STANDIN=1, benchmarks only). It rides the list so that every model of the process gets it.
REPLAY_MARKER = "OceanoReplayStandIn"
# Input shapes a ReplaySession remembers (each costs one set of the model's outputs).
REPLAY_SHAPES = 256


def select_providers(choice: ProviderChoice, *, standin: bool = False) -> list[str]:
    providers = _select_providers(choice)
    return [REPLAY_MARKER, *providers] if standin else providers


def _select_providers(choice: ProviderChoice) -> list[str]:
    available = set(ort.get_available_providers())
    if choice is ProviderChoice.CPU:
        return ["CPUExecutionProvider"]
    if choice is ProviderChoice.CUDA:
        if "CUDAExecutionProvider" not in available:
            raise ModelPackError(
                "PROVIDERS=cuda but onnxruntime offers no CUDAExecutionProvider "
                f"(available: {sorted(available)}); install onnxruntime-gpu or set PROVIDERS=auto"
            )
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return [p for p in _PROVIDER_ORDER if p in available]


def create_session(
    model: Path | bytes, *, providers: list[str], threads: int = 0, name: str = ""
) -> ort.InferenceSession:
    if REPLAY_MARKER in providers:
        real = create_session(model, providers=[p for p in providers if p != REPLAY_MARKER], threads=threads, name=name)
        return ReplaySession(real, name=name)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    source: Any = str(model) if isinstance(model, Path) else model
    try:
        session = ort.InferenceSession(source, sess_options=options, providers=providers)
    except Exception as exc:  # onnxruntime raises several unrelated types
        raise ModelPackError(f"cannot load ONNX model {name or str(model)[:80]}: {exc}") from exc
    return session


class ReplaySession:
    """The stand-in engine (ENGINE_STANDIN=1, for benchmarks): the first run at each input shape runs the real
    session and keeps its outputs; later runs at that shape answer those outputs at once. What a service reaches
    with it is the ceiling set by everything but inference (HTTP, decode, pre/post-processing, search), the one a
    GPU machine meets. Its answers are those of the first input of each shape: never for real use."""

    def __init__(self, real: ort.InferenceSession, *, name: str) -> None:
        self._real = real
        self._name = name
        self._outputs: dict[tuple[Any, ...], list[Any]] = {}
        self._lock = threading.Lock()
        self.real_runs = 0
        self.replayed_runs = 0
        logger.warning("ENGINE STAND-IN: %s answers recorded outputs, one per input shape; not for real use", name)

    def get_inputs(self) -> Any:
        return self._real.get_inputs()

    def get_outputs(self) -> Any:
        return self._real.get_outputs()

    def get_providers(self) -> list[str]:
        return self._real.get_providers()

    def run(self, output_names: list[str] | None, feed: dict[str, Any], *args: Any) -> list[Any]:
        key = (tuple(output_names or ()), *((k, v.shape, str(v.dtype)) for k, v in sorted(feed.items())))
        with self._lock:
            recorded = self._outputs.get(key)
        if recorded is not None:
            self.replayed_runs += 1
            return list(recorded)
        outputs = self._real.run(output_names, feed, *args)
        with self._lock:
            self.real_runs += 1
            if len(self._outputs) < REPLAY_SHAPES:
                self._outputs[key] = outputs
        return list(outputs)


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
