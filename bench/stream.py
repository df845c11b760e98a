"""Real-time streaming over /ws: one client sending a 640x480 one-face frame as fast as the answers come (the
next frame when the previous answer is in), then 8 clients at once; frames/s and p50/p95 round trip, for
`predict` (the emotion service's command), `process_frame` and `process_frame` with search. Then where the time
of one frame goes, stage by stage, in this process.

Goals (the old emotion service's claim, which covered its emotion model alone): predict p50 <= 20 ms for one
client, >= 100 predictions/s over 8 clients. Printed with PASS/FAIL.

The service runs for real: `python -m app` in a subprocess (uvicorn, one worker) on a fresh STATE_DIR holding the
faces of players.jpg (so that search has something to find), or --url for a running one (ws:// or wss://). The
clients run in this process, one socket and one asyncio task each (websockets' asyncio client: its threaded client
reads and writes a TLS session from two threads at once, which loses frames over wss://).

    python -m bench.stream [--frames 200] [--seconds 10] [--clients 8] [--url ws://host:9100/ws]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np
from websockets.asyncio.client import connect

from bench.common import Photos, free_port, percentile_ms, read_bgr, setup_logging
from bench.search_latency import running_service

GOAL_P50_MS = 20.0
GOAL_RATE = 100.0
MODES = {
    "predict": lambda frame: {"command": "predict", "image": frame},
    "process_frame": lambda frame: {"event": "process_frame", "data": {"frame": frame}},
    "process_frame+search": lambda frame: {
        "event": "process_frame",
        "data": {"frame": frame, "settings": {"search": True}},
    },
}


def one_face_frame(width: int = 640, height: int = 480) -> bytes:
    """A camera-sized JPEG (quality 85) with one face: Yao Ming's photo scaled to the frame's height, on grey."""
    face = read_bgr(Photos.yaoming)
    face = cv2.resize(face, (min(width, round(face.shape[1] * height / face.shape[0])), height))
    frame = np.full((height, width, 3), 128, np.uint8)
    left = (width - face.shape[1]) // 2
    frame[:, left : left + face.shape[1]] = face
    ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 85])
    assert ok
    return buf.tobytes()


@dataclass
class Run:
    round_trips: list[float] = field(default_factory=list)  # seconds
    server: list[float] = field(default_factory=list)  # the service's own processing time, seconds
    errors: dict[str, int] = field(default_factory=dict)
    wall: float = 0.0

    @property
    def rate(self) -> float:
        return len(self.round_trips) / self.wall if self.wall else 0.0


def server_seconds(answer: dict[str, Any]) -> float | None:
    if answer.get("event") == "detection_result":
        return float(answer["data"]["processing_time"]) / 1e3
    if answer.get("type") == "prediction" and answer.get("status") == "success":
        return float(answer["processing_time_ms"]) / 1e3
    return None


async def stream(url: str, message: str, *, frames: int, seconds: float, run: Run, start: asyncio.Barrier) -> None:
    """One client: send, wait for the answer, send the next; until `frames` answers or `seconds` passed."""
    async with connect(url, max_size=None, open_timeout=60) as ws:
        async with asyncio.timeout(60):
            json.loads(await ws.recv())  # connected
            await ws.send(message)  # warm-up, not counted
            await ws.recv()
        await start.wait()
        deadline = time.perf_counter() + seconds
        for _ in range(frames):
            sent = time.perf_counter()
            async with asyncio.timeout(60):
                await ws.send(message)
                answer = json.loads(await ws.recv())
            elapsed = time.perf_counter() - sent
            took = server_seconds(answer)
            if took is None:
                code = answer.get("data", {}).get("code") or answer.get("code") or "error"
                run.errors[code] = run.errors.get(code, 0) + 1
            else:
                run.round_trips.append(elapsed)
                run.server.append(took)
            if time.perf_counter() > deadline:
                break


def measure(url: str, message: str, clients: int, frames: int, seconds: float) -> Run:
    """`clients` sockets at once, each an asyncio task of this thread."""
    run = Run()

    async def all_clients() -> None:
        start = asyncio.Barrier(clients + 1)
        tasks = [
            asyncio.create_task(stream(url, message, frames=frames, seconds=seconds, run=run, start=start))
            for _ in range(clients)
        ]
        await start.wait()
        began = time.perf_counter()
        await asyncio.gather(*tasks)
        run.wall = time.perf_counter() - began

    asyncio.run(all_clients())
    return run


def report(name: str, clients: int, run: Run) -> None:
    if not run.round_trips:
        print(f"{name:22s} {clients:2d} client(s): no answers; errors {run.errors}")
        return
    errors = f"  errors {run.errors}" if run.errors else ""
    print(
        f"{name:22s} {clients:2d} client(s): {run.rate:6.1f} frames/s   round trip p50 "
        f"{percentile_ms(run.round_trips, 50):6.1f} ms  p95 {percentile_ms(run.round_trips, 95):6.1f} ms   "
        f"server p50 {percentile_ms(run.server, 50):6.1f} ms{errors}"
    )


def profile(frame: bytes, reps: int) -> None:
    """Median ms of each stage of one frame, in this process (the service is idle meanwhile)."""
    from app.bootstrap import load_models
    from app.config import Settings
    from app.engine import InferenceGate
    from app.engine.align import align_face
    from app.engine.engine import upscale_limit
    from app.faces import Face
    from app.imaging import decode_image

    engine, heads = load_models(Settings(), InferenceGate(1, 30.0))
    emotion = heads.select("emotion")[0]
    text = base64.b64encode(frame).decode()
    decoded = decode_image(frame, max_bytes=20 << 20, max_pixels=50_000_000)
    small = decode_image(frame, max_bytes=20 << 20, max_pixels=50_000_000, max_side=320)  # predict's copy
    boxes, scores, kps = engine.detector.detect([decoded.pixels])[0]
    crop = align_face(decoded.pixels, kps[0])
    face = Face(bbox=boxes[0], kps=kps[0], det_score=float(scores[0]), crop=crop)

    def median_ms(fn: Any) -> float:
        fn()
        times = []
        for _ in range(reps):
            started = time.perf_counter()
            fn()
            times.append(time.perf_counter() - started)
        return statistics.median(times) * 1e3

    stages = [
        ("base64 decode", lambda: base64.b64decode(text, validate=True)),
        ("JPEG decode", lambda: decode_image(frame, max_bytes=20 << 20, max_pixels=50_000_000)),
        ("JPEG decode at 320", lambda: decode_image(frame, max_bytes=20 << 20, max_pixels=50_000_000, max_side=320)),
        ("detect 640x480 (SCRFD)", lambda: engine.detector.detect([decoded.pixels])),
        ("detect 320x240", lambda: engine.detector.detect([small.pixels], [upscale_limit(small)])),
        ("align (112x112)", lambda: align_face(decoded.pixels, kps[0])),
        ("embed (ArcFace)", lambda: engine.recognizer.embed([crop])),
        ("emotion head", lambda: emotion.run([decoded.pixels], [[face]])),
        ("engine, predict (320)", lambda: engine.analyze_batch([small], heads=[emotion], embed=False)),
        ("engine, frame (640)", lambda: engine.analyze_batch([decoded], heads=[emotion], embed=False)),
        ("engine, frame + embed", lambda: engine.analyze_batch([decoded], heads=[emotion])),
    ]
    print(f"\nwhere one 640x480 frame's time goes (median of {reps}, this process, ORT threads: all cores):")
    for name, fn in stages:
        print(f"  {name:24s} {median_ms(fn):7.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=200, help="answers per client at most (default 200)")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds per client at most (default 10)")
    parser.add_argument("--clients", type=int, default=8, help="clients of the concurrent run (default 8)")
    parser.add_argument("--url", help="a running service's socket (ws://host:port/ws) instead of starting one")
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated, of: " + ", ".join(MODES))
    parser.add_argument("--profile-reps", type=int, default=50, help="0: no profile")
    args = parser.parse_args()
    setup_logging()
    frame = one_face_frame()
    text = base64.b64encode(frame).decode()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or any(m not in MODES for m in modes) or "predict" not in modes:
        parser.error(f"--modes: give predict and any of {', '.join(MODES)}")
    print(
        f"frame: 640x480 JPEG, one face, {len(frame) / 1024:.0f} KB ({len(text) / 1024:.0f} KB base64); "
        f"{os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f}; service env ORT_THREADS="
        f"{os.environ.get('ORT_THREADS', '0')} GPU_CONCURRENCY={os.environ.get('GPU_CONCURRENCY', '1')} "
        f"PREDICT_MAX_SIDE={os.environ.get('PREDICT_MAX_SIDE', '320')}"
    )

    def run_all(url: str) -> dict[tuple[str, int], Run]:
        results = {}
        for name in modes:
            message = json.dumps(MODES[name](text))
            for clients in (1, args.clients):
                results[name, clients] = run = measure(url, message, clients, args.frames, args.seconds)
                report(name, clients, run)
        return results

    if args.url:
        results = run_all(args.url)
    else:
        with tempfile.TemporaryDirectory(prefix="oceano-stream-") as state:
            port = free_port()
            with running_service(Path(state), port) as http:  # this environment, the state under `state`
                r = http.post(
                    "/api/faces", files={"file": ("players.jpg", Photos.players.read_bytes())}, data={"subject": "team"}
                )
                if r.status_code != 201:
                    raise SystemExit(f"indexing players.jpg failed: {r.status_code} {r.text[:300]}")
                results = run_all(f"ws://127.0.0.1:{port}/ws")
                stats = httpx.get(f"http://127.0.0.1:{port}/api/stats").json()
                print(
                    f"service /api/stats: {stats['total_frames_processed']} frames processed, "
                    f"{stats['total_frames_dropped']} dropped, {stats['total_frames_failed']} failed, "
                    f"average {stats['average_processing_time']} ms, p95 {stats['p95_processing_time']} ms"
                )

    one, many = results["predict", 1], results["predict", args.clients]
    p50 = percentile_ms(one.round_trips, 50) if one.round_trips else float("inf")
    print("\ngoals (2-core CPU, bundled pack):")
    print(
        f"  predict p50, one client    {p50:7.1f} ms   goal <= {GOAL_P50_MS:.0f} ms   "
        f"{'PASS' if p50 <= GOAL_P50_MS else 'FAIL'}"
    )
    print(
        f"  predictions/s, {args.clients} clients   {many.rate:7.1f}      goal >= {GOAL_RATE:.0f}      "
        f"{'PASS' if many.rate >= GOAL_RATE else 'FAIL'}"
    )
    if args.profile_reps:
        profile(frame, args.profile_reps)
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
