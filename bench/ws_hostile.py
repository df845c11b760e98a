"""Hostile WebSocket clients against the real service (`python -m app` in a subprocess): what they cost it.

Two attacks, each run against one or more checkouts in turn (A B A B with --rounds 2, so that load noise cancels):

  bomb     N sockets each send M `process_frame` messages whose frame is MESSAGE_MB of "A"s. The client offers
           permessage-deflate: where the server takes it, a 28 MB message costs the sender ~27 KB on the wire.
           Printed: whether deflate was negotiated, the answers and close codes the sockets got, the service's
           peak RSS growth over its warm RSS (VmHWM - warm VmRSS, from /proc), and its RSS once the sockets have
           closed (after --settle seconds).
  lockout  AUTH_READS=key: N sockets connect without a key and never authenticate (each reconnects as soon as it
           is closed), while one client with a valid key (in its first message, or its handshake with
           --key-in handshake) connects every second and sends a frame. Printed: how many of its tries got a
           detection, how they ended otherwise (close codes), and how the key-less sockets were closed.

    python -m bench.ws_hostile bomb [--sockets 64] [--messages 2] [--message-mb 28] [--app-dir DIR ...]
    python -m bench.ws_hostile lockout [--sockets 64] [--seconds 25] [--key-in message|handshake] [--app-dir DIR ...]

Compare with an older commit: git archive COMMIT | tar -x -C /tmp/before, then --app-dir /tmp/before --app-dir .
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from bench.common import Photos
from bench.live import REPO, Server, proc_status_kb, start_server, stop_server

logger = logging.getLogger("bench.ws_hostile")
MB = 2**20


def ws_url(server: Server, path: str = "/ws") -> str:
    return server.base_url.replace("http://", "ws://") + path


def close_code(exc: BaseException) -> str:
    if isinstance(exc, ConnectionClosed):
        return str(exc.rcvd.code) if exc.rcvd is not None else "no close frame"
    if isinstance(exc, InvalidStatus):
        return f"HTTP {exc.response.status_code}"
    return type(exc).__name__


# ------------------------------------------------------------------------------------------------ bomb
@dataclass
class BombOutcome:
    app_dir: Path
    deflate: Counter[str] = field(default_factory=Counter)
    answers: Counter[str] = field(default_factory=Counter)
    closes: Counter[str] = field(default_factory=Counter)
    warm_mb: float = 0.0
    peak_growth_mb: float = 0.0
    after_mb: float = 0.0
    alive: bool = True


async def bomb_socket(server: Server, message: str, count: int, outcome: BombOutcome, timeout: float) -> None:
    try:
        async with connect(ws_url(server), compression="deflate", max_size=None, open_timeout=60) as ws:
            negotiated = ws.response is not None and "permessage-deflate" in (
                ws.response.headers.get("Sec-WebSocket-Extensions") or ""
            )
            outcome.deflate["yes" if negotiated else "no"] += 1
            await asyncio.wait_for(ws.recv(), timeout)  # connected
            for _ in range(count):
                await ws.send(message)
            for _ in range(count):
                answer = json.loads(await asyncio.wait_for(ws.recv(), timeout))
                outcome.answers[answer.get("data", {}).get("code") or answer.get("event") or "?"] += 1
            outcome.closes["open (closed by the client)"] += 1
    except (ConnectionClosed, WebSocketException, OSError, TimeoutError) as exc:
        outcome.closes[close_code(exc)] += 1


async def bomb_attack(server: Server, args: argparse.Namespace, outcome: BombOutcome) -> None:
    size = int(args.message_mb * MB)
    prefix = '{"event": "process_frame", "data": {"frame": "'
    message = prefix + "A" * (size - len(prefix) - 3) + '"}}'
    await asyncio.gather(
        *(bomb_socket(server, message, args.messages, outcome, args.timeout) for _ in range(args.sockets))
    )


def run_bomb(app_dir: Path, args: argparse.Namespace) -> BombOutcome:
    outcome = BombOutcome(app_dir)
    with tempfile.TemporaryDirectory(prefix="oceano-ws-bomb-") as tmp:
        server = start_server(app_dir, Path(tmp), timeout=args.start_timeout)
        try:
            outcome.warm_mb = server.warm_rss_kb / 1024
            asyncio.run(bomb_attack(server, args, outcome))
            status = server.memory_kb()
            if not status:
                outcome.alive = False
                return outcome
            outcome.peak_growth_mb = (status["VmHWM"] - server.warm_rss_kb) / 1024
            time.sleep(args.settle)
            outcome.after_mb = server.memory_kb().get("VmRSS", 0) / 1024
        finally:
            stop_server(server)
    return outcome


# ------------------------------------------------------------------------------------------------ lockout
@dataclass
class LockoutOutcome:
    app_dir: Path
    keyed: Counter[str] = field(default_factory=Counter)
    idle_closes: Counter[str] = field(default_factory=Counter)
    idle_connections: int = 0


def create_key(app_dir: Path, state: Path) -> str:
    """A search key in the service's keys file, made by `python -m app.keys` before the service starts."""
    done = subprocess.run(
        [sys.executable, "-m", "app.keys", "create", "--name", "bench", "--scope", "search"],
        cwd=app_dir,
        env={**os.environ, "STATE_DIR": str(state), "PYTHONPATH": str(app_dir)},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return next(word for word in done.stdout.split() if word.startswith("oc_"))


async def idle_socket(server: Server, until: float, outcome: LockoutOutcome) -> None:
    """Connects without a key and never says anything; reconnects at once when closed."""
    while time.monotonic() < until:
        try:
            async with connect(ws_url(server), open_timeout=30) as ws:
                outcome.idle_connections += 1
                while True:
                    await asyncio.wait_for(ws.recv(), max(0.1, until - time.monotonic()))
        except (ConnectionClosed, WebSocketException, OSError) as exc:
            outcome.idle_closes[close_code(exc)] += 1
        except TimeoutError:
            return


async def keyed_try(server: Server, key: str, frame: str, key_in: str) -> str:
    """One keyed client: the key in its first message (`key_in` "message") or in the handshake (an X-API-Key
    header), then one frame. Its outcome in a word."""
    headers = {"X-API-Key": key} if key_in == "handshake" else None
    try:
        async with connect(ws_url(server), open_timeout=30, max_size=None, additional_headers=headers) as ws:
            if key_in == "message":
                await ws.send(json.dumps({"command": "auth", "key": key}))
            await ws.send(json.dumps({"event": "process_frame", "data": {"frame": frame}}))
            while True:
                answer = json.loads(await asyncio.wait_for(ws.recv(), 60))
                if answer.get("event") == "detection_result":
                    return "detection"
                if answer.get("event") == "error":
                    return f"error {answer['data']['code']}"
    except (ConnectionClosed, WebSocketException, OSError, TimeoutError) as exc:
        return f"closed {close_code(exc)}"


async def lockout_attack(server: Server, key: str, args: argparse.Namespace, outcome: LockoutOutcome) -> None:
    frame = base64.b64encode(Photos.yaoming.read_bytes()).decode()
    until = time.monotonic() + args.seconds
    idle = [asyncio.create_task(idle_socket(server, until, outcome)) for _ in range(args.sockets)]
    await asyncio.sleep(2.0)  # the key-less sockets are in
    while time.monotonic() < until - 1:
        outcome.keyed[await keyed_try(server, key, frame, args.key_in)] += 1
        await asyncio.sleep(1.0)
    await asyncio.gather(*idle)


def run_lockout(app_dir: Path, args: argparse.Namespace) -> LockoutOutcome:
    outcome = LockoutOutcome(app_dir)
    with tempfile.TemporaryDirectory(prefix="oceano-ws-lockout-") as tmp:
        key = create_key(app_dir, Path(tmp))
        server = start_server(app_dir, Path(tmp), timeout=args.start_timeout, env={"AUTH_READS": "key"})
        try:
            asyncio.run(lockout_attack(server, key, args, outcome))
        finally:
            stop_server(server)
    return outcome


# ------------------------------------------------------------------------------------------------ main
def fmt(counter: Counter[str]) -> str:
    return ", ".join(f"{k} x{n}" for k, n in sorted(counter.items())) or "-"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.ws_hostile", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("attack", choices=["bomb", "lockout"])
    parser.add_argument("--sockets", type=int, default=64, help="attacking sockets (default 64)")
    parser.add_argument("--messages", type=int, default=2, help="bomb: messages per socket (default 2)")
    parser.add_argument("--message-mb", type=float, default=28.0, help="bomb: MB per message (default 28)")
    parser.add_argument("--settle", type=float, default=10.0, help="bomb: seconds before RSS is read after")
    parser.add_argument("--seconds", type=float, default=25.0, help="lockout: seconds the attack lasts")
    parser.add_argument(
        "--key-in",
        choices=["message", "handshake"],
        default="message",
        help="lockout: where the keyed client puts its key",
    )
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for each answer")
    parser.add_argument("--start-timeout", type=float, default=180.0, help="seconds to wait for /health")
    parser.add_argument("--rounds", type=int, default=1, help="times through the list of --app-dir (A B A B)")
    parser.add_argument(
        "--app-dir",
        type=Path,
        action="append",
        help="checkout whose `app` is run (repeatable; default: this one), e.g. an older commit unpacked with "
        "git archive",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    if not Path("/proc/self/status").is_file():
        raise SystemExit("this benchmark reads /proc/PID/status: Linux only")
    dirs = [d.resolve() for d in (args.app_dir or [REPO])]
    print(f"load average {os.getloadavg()[0]:.2f}; own RSS {proc_status_kb(os.getpid())['VmRSS'] / 1024:.0f} MB")
    for _ in range(args.rounds):
        for app_dir in dirs:
            if args.attack == "bomb":
                b = run_bomb(app_dir, args)
                print(
                    f"{app_dir}: {args.sockets} sockets x {args.messages} messages of {args.message_mb:g} MB: "
                    f"deflate {fmt(b.deflate)}; answers {fmt(b.answers)}; closes {fmt(b.closes)}; warm RSS "
                    f"{b.warm_mb:.0f} MB, peak +{b.peak_growth_mb:.0f} MB, RSS {args.settle:g} s after "
                    f"{b.after_mb:.0f} MB{'' if b.alive else '; THE SERVICE DIED'}",
                    flush=True,
                )
            else:
                lo = run_lockout(app_dir, args)
                print(
                    f"{app_dir}: {args.sockets} key-less sockets for {args.seconds:g} s ({lo.idle_connections} "
                    f"connections, closed: {fmt(lo.idle_closes)}); keyed client (key in the {args.key_in}): "
                    f"{fmt(lo.keyed)}",
                    flush=True,
                )
    print(f"load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
