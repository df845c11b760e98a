"""The runtime: providers chosen in one place, each with its options from the settings, and those options reaching
the ONNX session; the model base's batch sizes, chunks and padding.

onnxruntime here offers only the CPU provider: the CUDA and TensorRT cases make onnxruntime *say* it offers them and
catch the arguments a session would be built with (a stand-in for a GPU machine); what is checked is the options
object the code builds, not CUDA itself."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

import app.engine.runtime as runtime_module
from app.config import ArenaExtendStrategy, CudnnConvAlgoSearch, ProviderChoice, Settings
from app.engine import FaceEngine, OnnxModel
from app.engine.runtime import (
    CPU_PROVIDER,
    CUDA_PROVIDER,
    REPLAY_MARKER,
    TENSORRT_PROVIDER,
    Runtime,
    TensorrtProfile,
    create_session,
    select_providers,
)
from tests.support import VECTRON_DIR, make_settings

GPU_PROVIDERS = [TENSORRT_PROVIDER, CUDA_PROVIDER, CPU_PROVIDER]


@pytest.fixture
def gpu_offered(monkeypatch: pytest.MonkeyPatch) -> None:
    """onnxruntime says it offers TensorRT and CUDA (a stand-in for a GPU machine's onnxruntime-gpu)."""
    monkeypatch.setattr(ort, "get_available_providers", lambda: list(GPU_PROVIDERS))


REAL_SESSION = ort.InferenceSession


class SessionArguments:
    """Stands in for ort.InferenceSession on a GPU machine: keeps what a session would be built with, and answers
    from a real session on the CPU."""

    calls: list[dict[str, Any]] = []

    def __init__(self, source: Any, *, sess_options: Any, providers: list[Any]) -> None:
        SessionArguments.calls.append({"source": source, "sess_options": sess_options, "providers": providers})
        self._cpu = REAL_SESSION(source, sess_options=sess_options, providers=[CPU_PROVIDER])

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cpu, name)


def test_cuda_options_are_set_not_defaulted(gpu_offered: None, tmp_path: Path) -> None:
    runtime = Runtime.from_settings(make_settings(tmp_path, providers="cuda"))
    assert runtime.providers == (CUDA_PROVIDER, CPU_PROVIDER)  # TensorRT only when asked for
    cuda = dict(zip(runtime.providers, runtime.options, strict=True))[CUDA_PROVIDER]
    # HEURISTIC by default: onnxruntime's own default (EXHAUSTIVE) costs seconds per new input shape on a GPU
    assert cuda == {"device_id": "0", "cudnn_conv_algo_search": "HEURISTIC", "arena_extend_strategy": "kNextPowerOfTwo"}


def test_cuda_settings_reach_the_session(gpu_offered: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = make_settings(
        tmp_path,
        providers="cuda",
        cuda_device_id=1,
        cudnn_conv_algo_search="EXHAUSTIVE",
        gpu_mem_limit_mb=2048,
        arena_extend_strategy="kSameAsRequested",
        ort_threads=2,
    )
    assert settings.cudnn_conv_algo_search is CudnnConvAlgoSearch.EXHAUSTIVE
    assert settings.arena_extend_strategy is ArenaExtendStrategy.SAME_AS_REQUESTED
    SessionArguments.calls.clear()
    monkeypatch.setattr(runtime_module.ort, "InferenceSession", SessionArguments)
    create_session(VECTRON_DIR / "w600k_mbf.onnx", runtime=Runtime.from_settings(settings), name="w600k_mbf.onnx")
    (call,) = SessionArguments.calls
    assert call["providers"] == [
        (
            CUDA_PROVIDER,
            {
                "device_id": "1",
                "cudnn_conv_algo_search": "EXHAUSTIVE",
                "arena_extend_strategy": "kSameAsRequested",
                "gpu_mem_limit": str(2048 * 1024 * 1024),
            },
        ),
        (CPU_PROVIDER, {}),
    ]
    assert call["sess_options"].intra_op_num_threads == 2


def test_tensorrt_when_asked_and_offered_with_its_cache_under_state_dir(
    gpu_offered: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = make_settings(tmp_path / "state", providers="auto", tensorrt=True)
    runtime = Runtime.from_settings(settings)
    assert runtime.providers == tuple(GPU_PROVIDERS)
    cache = tmp_path / "state" / "tensorrt"
    assert cache.is_dir()
    profile = TensorrtProfile("input.1", (1, 3, 112, 112), (64, 3, 112, 112))
    trt, cuda, cpu = runtime.session_providers(profile)
    assert trt == (
        TENSORRT_PROVIDER,
        {
            "device_id": "0",
            "trt_engine_cache_enable": "True",
            "trt_engine_cache_path": str(cache),
            "trt_timing_cache_enable": "True",
            "trt_timing_cache_path": str(cache),
            "trt_profile_min_shapes": "input.1:1x3x112x112",
            "trt_profile_max_shapes": "input.1:64x3x112x112",
            "trt_profile_opt_shapes": "input.1:64x3x112x112",
        },
    )
    assert cuda[0] == CUDA_PROVIDER and cpu == (CPU_PROVIDER, {})
    # the model base gives each model its own profile: its input name and batch sizes
    SessionArguments.calls.clear()
    monkeypatch.setattr(runtime_module.ort, "InferenceSession", SessionArguments)
    OnnxModel(VECTRON_DIR / "w600k_mbf.onnx", name="w600k_mbf.onnx", runtime=runtime, batch_sizes=(1, 4, 16))
    options = dict(SessionArguments.calls[0]["providers"])[TENSORRT_PROVIDER]
    assert options["trt_profile_min_shapes"].endswith(":1x3x112x112")
    assert options["trt_profile_max_shapes"].endswith(":16x3x112x112")


def test_no_tensorrt_unless_offered_and_the_cpu_gets_no_gpu_options(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA_PROVIDER, CPU_PROVIDER])
    assert select_providers(ProviderChoice.AUTO, tensorrt=True) == [CUDA_PROVIDER, CPU_PROVIDER]
    monkeypatch.undo()
    runtime = Runtime.from_settings(make_settings(tmp_path, tensorrt=True))  # the real onnxruntime here: CPU only
    assert runtime.session_providers() == [(CPU_PROVIDER, {})]
    assert select_providers(ProviderChoice.AUTO, standin=True) == [REPLAY_MARKER, CPU_PROVIDER]


def test_runtime_info_shows_what_is_in_force(engine: FaceEngine) -> None:
    info = engine.runtime_info()
    assert info["providers"] == info["providers_in_use"] == [CPU_PROVIDER]
    assert info["provider_options"] == {CPU_PROVIDER: {}}
    assert info["batch_sizes"] == {"detector": [1], "recognizer": [1, 4, 16]}  # the CPU's defaults
    assert len(info["detector_canvases"]) == 14 and info["warm_up_s"] > 0  # 7 aspects at DET_SIZE and at half


# ------------------------------------------------------------------------------------------ batches and padding
def test_cpu_chunks_use_sizes_of_the_set_without_padding(engine: FaceEngine) -> None:
    recognizer = engine.recognizer
    assert not recognizer.pad and recognizer.batch_sizes == (1, 4, 16)
    assert [(c.rows, c.size) for c in recognizer.chunks(23)] == [(16, 16), (4, 4), (1, 1), (1, 1), (1, 1)]
    assert recognizer.chunks(0) == []


def test_gpu_chunks_pad_the_last_one_and_drop_its_rows(engine: FaceEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    recognizer = engine.recognizer
    monkeypatch.setattr(recognizer, "pad", True)  # as on a GPU
    assert [(c.rows, c.size) for c in recognizer.chunks(23)] == [(16, 16), (7, 16)]
    assert [(c.rows, c.size) for c in recognizer.chunks(3)] == [(3, 4)]
    crops = [np.full((112, 112, 3), 40 * i, np.uint8) for i in range(3)]
    padded = recognizer.embed(crops)
    monkeypatch.setattr(recognizer, "pad", False)
    alone = np.stack([recognizer.embed([crop])[0] for crop in crops])
    assert padded.shape == (3, recognizer.dim)  # the padding rows' outputs are dropped
    assert np.allclose(padded, alone, atol=1e-4)  # and change nothing in the real rows


def test_a_run_outside_the_sizes_is_refused(engine: FaceEngine) -> None:
    with pytest.raises(ValueError, match="exceed the largest batch size"):
        engine.recognizer.run_blob(np.zeros((17, 3, 112, 112), np.float32))
    with pytest.raises(ValueError, match="cannot run at batch size 3"):
        engine.recognizer.run_blob(np.zeros((2, 3, 112, 112), np.float32), 3)


def test_warm_up_runs_every_shape_and_times_it(engine: FaceEngine) -> None:
    seconds = engine.recognizer.warm_up()
    assert list(seconds) == [(1, 3, 112, 112), (4, 3, 112, 112), (16, 3, 112, 112)]
    assert all(s > 0 for s in seconds.values())
    timing = engine.recognizer.timings[(4, 3, 112, 112)]
    assert timing.runs >= 2 and timing.warm_s is not None
    assert engine.detector.time_run((1, 3, 640, 640)) > 0


def test_settings_parse_batch_sizes() -> None:
    assert Settings(rec_batch_sizes="16, 1,4,4").rec_batch_sizes == (1, 4, 16)
    assert Settings(det_batch_sizes="").det_batch_sizes == ()
    with pytest.raises(ValueError, match="REC_BATCH_SIZES"):
        Settings(rec_batch_sizes="1,x")
    with pytest.raises(ValueError, match="between 1 and 4096"):
        Settings(det_batch_sizes="0,4")
