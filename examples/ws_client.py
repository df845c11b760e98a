"""A command-line client of Oceano's real-time socket (/ws), in the old emotion service's style.

    python examples/ws_client.py --health
    python examples/ws_client.py --emotions
    python examples/ws_client.py --model-info
    python examples/ws_client.py photo.jpg                 # predict: the largest face's emotion
    python examples/ws_client.py --folder photos/          # predict every image of a folder, one after the other
    python examples/ws_client.py --frame --search crowd.jpg  # process_frame: every face, crowd level, matches

Prints each answer as JSON; exits 1 when any answer is an error. Needs the `websockets` package (a dependency
of Oceano). --url defaults to ws://localhost:9100/ws; add ?key=... there once the service requires API keys.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import time
from pathlib import Path
from typing import Any

from websockets.sync.client import ClientConnection, connect

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}


def request(ws: ClientConnection, message: dict[str, Any], timeout: float) -> dict[str, Any]:
    ws.send(json.dumps(message))
    answer: dict[str, Any] = json.loads(ws.recv(timeout=timeout))
    return answer


def image_message(path: Path, args: argparse.Namespace) -> dict[str, Any]:
    data = base64.b64encode(path.read_bytes()).decode()
    if not args.frame:
        return {"command": "predict", "image": data}
    settings: dict[str, Any] = {"search": args.search, "top_k": args.top_k}
    if args.crowd_threshold is not None:
        settings["crowd_threshold"] = args.crowd_threshold
    return {
        "event": "process_frame",
        "data": {"frame": data, "timestamp": round(time.time() * 1000), "settings": settings},
    }


def is_error(answer: dict[str, Any]) -> bool:
    return answer.get("event") == "error" or answer.get("status") == "error"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("image", nargs="?", type=Path, help="an image to analyse")
    what.add_argument("--health", action="store_true", help="the service's health")
    what.add_argument("--emotions", action="store_true", help="the emotion classes")
    what.add_argument("--model-info", action="store_true", help="the emotion model")
    what.add_argument("--folder", type=Path, help="analyse every image in this folder")
    parser.add_argument("--url", default="ws://localhost:9100/ws", help="the socket (default %(default)s)")
    parser.add_argument(
        "--frame", action="store_true", help="send images as process_frame (all faces, crowd level) instead of predict"
    )
    parser.add_argument("--search", action="store_true", help="with --frame: name each face's closest match")
    parser.add_argument("--top-k", type=int, default=1, help="with --search: matches per face (default 1)")
    parser.add_argument("--crowd-threshold", type=int, help="with --frame: crowd_warning past this many faces")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for each answer")
    parser.add_argument("--compact", action="store_true", help="one line per answer")
    args = parser.parse_args(argv)

    if args.health:
        messages = [{"command": "health"}]
    elif args.emotions:
        messages = [{"command": "emotions"}]
    elif args.model_info:
        messages = [{"command": "model_info"}]
    else:
        if args.folder is not None:
            if not args.folder.is_dir():
                parser.error(f"{args.folder} is not a folder")
            images = sorted(p for p in args.folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not images:
                parser.error(f"no images in {args.folder}")
        else:
            if not args.image.is_file():
                parser.error(f"{args.image} is not a file")
            images = [args.image]
        messages = [image_message(p, args) for p in images]

    failed = False
    with connect(args.url, max_size=None, open_timeout=args.timeout) as ws:
        hello = json.loads(ws.recv(timeout=args.timeout))
        if hello.get("event") != "connected":
            print(json.dumps(hello, indent=None if args.compact else 2))
            return 1
        for i, message in enumerate(messages):
            answer = request(ws, message, args.timeout)
            if args.folder is not None:
                answer = {"file": images[i].name, **answer}
            failed |= is_error(answer)
            print(json.dumps(answer, indent=None if args.compact else 2), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
