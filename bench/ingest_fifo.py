"""A FIFO swapped in for a photo during an ingest job (after the walk listed it, before it is read).

    python -m bench.ingest_fifo [--photos 6] [--wait 20]

The real app in this process (lifespan run, INGEST_ROOTS a temporary folder of `--photos` one-face photos). The
swap is made deterministic by wrapping IngestJob._check (the stat the walk's file goes through before it is handed
to a decode worker): for the first photo, the stat is taken, then the file is replaced by a FIFO nobody writes to.
Printed: the job's state after at most `--wait` seconds, what `DELETE /api/jobs/{id}` answers and the job's state
after it, whether a second job runs to its end within `--wait` seconds, and the seconds the service takes to shut
down. A reader stuck in open() on the FIFO is released 90 s into the shutdown (the FIFO is opened for writing), so
that the process can exit.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import cv2
from fastapi.testclient import TestClient

from app.api import create_app
from app.config import Settings
from app.ingest.pipeline import IngestJob
from bench.common import Photos, read_bgr, setup_logging

RELEASE_AFTER = 90.0
FINISHED = {"completed", "failed", "cancelled"}


def photo_folder(folder: Path, n: int) -> list[Path]:
    image = read_bgr(Photos.yaoming)
    files = []
    for i in range(n):
        image[:4, :4] = (i, 0, 255)  # other bytes per copy
        path = folder / f"photo{i:02d}.jpg"
        cv2.imwrite(str(path), image)
        files.append(path)
    return files


def wait_job(client: TestClient, job_id: str, seconds: float) -> dict[str, Any]:
    deadline = time.monotonic() + seconds
    while True:
        job: dict[str, Any] = client.get(f"/api/jobs/{job_id}").json()
        if job["status"] in FINISHED or time.monotonic() > deadline:
            return job
        time.sleep(0.2)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=6)
    parser.add_argument("--wait", type=float, default=20.0)
    args = parser.parse_args(argv)
    setup_logging()
    print(f"load average {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory(prefix="oceano-fifo-") as tmp:
        root = Path(tmp) / "photos"
        first, second = root / "first", root / "second"
        first.mkdir(parents=True)
        second.mkdir()
        photo_folder(second, args.photos)
        victim = photo_folder(first, args.photos)[0]
        original_check = IngestJob._check

        def check_then_swap(job: IngestJob, path: Path) -> Any:
            result = original_check(job, path)
            if path == victim and not victim.is_fifo():
                victim.unlink()
                os.mkfifo(victim)
            return result

        IngestJob._check = check_then_swap  # type: ignore[method-assign,assignment]
        state = Path(tmp) / "state"
        settings = Settings(
            state_dir=state, qdrant_path=state / "qdrant", thumbs_dir=state / "thumbs", ingest_roots=str(root)
        )
        client = TestClient(create_app(settings), client=("127.0.0.1", 50000))
        client.__enter__()
        try:
            job = client.post("/api/ingest", json={"path": str(first)}).json()
            job = wait_job(client, job["id"], args.wait)
            print(f"FIFO job after <= {args.wait:.0f}s: status={job['status']} failed files={job['last_errors']}")
            started = time.monotonic()
            cancelled = client.delete(f"/api/jobs/{job['id']}")
            print(
                f"DELETE /api/jobs/{{id}}: {cancelled.status_code} status={cancelled.json()['status']} "
                f"in {time.monotonic() - started:.1f}s"
            )
            nxt = client.post("/api/ingest", json={"path": str(second)}).json()
            nxt = wait_job(client, nxt["id"], args.wait)
            print(f"next job after <= {args.wait:.0f}s: status={nxt['status']}")
        finally:
            started = time.monotonic()
            # A reader stuck in open() is released after RELEASE_AFTER s, so that this process can exit.
            release = threading.Timer(RELEASE_AFTER, lambda: os.close(os.open(victim, os.O_RDWR | os.O_NONBLOCK)))
            release.start()
            client.__exit__(None, None, None)
            release.cancel()
            print(f"shutdown took {time.monotonic() - started:.1f}s (a stuck reader released after {RELEASE_AFTER}s)")


if __name__ == "__main__":
    main()
