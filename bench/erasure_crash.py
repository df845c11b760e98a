"""Erasure under a crash: `DELETE /api/faces?subject=...` against `python -m app`, SIGKILLed a few ms in.

    python -m bench.erasure_crash [--faces 530] [--trials 4] [--kill-after-ms 8 15]

Each trial: a fresh STATE_DIR seeded (with the service stopped) with `--faces` faces under one subject (random
unit vectors, a small JPEG crop each, written through the store and thumbnail classes the service uses, under the
fingerprint of the pack it loads), the service started, the DELETE sent, the process SIGKILLed after a delay drawn
from `--kill-after-ms`, the service started again. Printed per trial: points and crops of the subject left after
the restart, and what a retried DELETE answers. Exit status 1 when any crop or point outlives its erasure.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import signal
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

from app.config import Settings
from app.engine import resolve_pack
from app.store import EdgeStore, FacePoint, ThumbnailStore, point_id, spec_from_settings
from bench.common import REPO, setup_logging
from bench.live import Server, start_server, stop_server

logger = logging.getLogger("bench.erasure_crash")
SUBJECT = "erase-me"
CROP = bytes.fromhex("ffd8ffe000104a46494600010100000100010000ffd9")  # a tiny JPEG-shaped file


def seed(state: Path, faces: int) -> None:
    settings = Settings(state_dir=state, qdrant_path=state / "qdrant", thumbs_dir=state / "thumbs")
    pack = resolve_pack(settings)
    dim = 512
    store = EdgeStore(
        settings.qdrant_path / settings.collection_name,
        spec_from_settings(settings, dim=dim, pack=pack.fingerprint),
        background_index=False,
    )
    thumbs = ThumbnailStore(settings.thumbs_dir)
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((faces, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    points = []
    for i in range(faces):
        pid = point_id(f"erasure-bench-{i}", 0)
        thumbs.save(pid, CROP)
        points.append(FacePoint(pid, vectors[i], {"file": f"/photos/{i}.jpg", "subject": SUBJECT, "thumb": pid}))
    store.upsert(points)
    store.close()


def crops(state: Path) -> int:
    return sum(1 for _ in (state / "thumbs").glob("*/*.jpg"))


def trial(args: argparse.Namespace, delay_ms: float) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="oceano-erasure-") as tmp:
        state = Path(tmp)
        seed(state, args.faces)
        server = start_server(REPO, state)
        answer: list[object] = []
        connected = threading.Event()

        def erase() -> None:
            try:
                with httpx.Client(base_url=server.base_url, timeout=60) as http:
                    http.get("/health")  # the connection is open (kept alive) before the DELETE goes out
                    connected.set()
                    answer.append(http.delete("/api/faces", params={"subject": SUBJECT}).status_code)
            except httpx.TransportError as exc:
                answer.append(type(exc).__name__)

        sender = threading.Thread(target=erase)
        sender.start()
        connected.wait(60)
        time.sleep(delay_ms / 1e3)
        os.kill(server.pid, signal.SIGKILL)
        server.proc.wait(30)
        sender.join(60)
        left_on_kill = crops(state)
        restarted: Server = start_server(REPO, state)
        try:
            with httpx.Client(base_url=restarted.base_url, timeout=60) as http:
                points = http.get("/status").json()["vectors"]
                crops_after_restart = crops(state)
                retry = http.delete("/api/faces", params={"subject": SUBJECT})
                crops_after_retry = crops(state)
        finally:
            stop_server(restarted)
        return {
            "kill_ms": round(delay_ms, 1),
            "first_delete": answer[0] if answer else None,
            "crops_at_kill": left_on_kill,
            "points_after_restart": points,
            "crops_after_restart": crops_after_restart,
            "retry_status": retry.status_code,
            "crops_after_retry": crops_after_retry,
        }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--faces", type=int, default=530)
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--kill-after-ms", type=float, nargs=2, default=(8.0, 15.0))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    setup_logging()
    rng = random.Random(args.seed)
    print(f"load average {os.getloadavg()[0]:.2f}; {args.faces} faces under one subject; tree {REPO}")
    bad = False
    for _ in range(args.trials):
        row = trial(args, rng.uniform(*args.kill_after_ms))
        print("  ".join(f"{k}={v}" for k, v in row.items()), flush=True)
        bad |= bool(row["points_after_restart"]) or bool(row["crops_after_retry"]) or bool(row["crops_after_restart"])
    raise SystemExit(1 if bad else 0)


if __name__ == "__main__":
    main()
