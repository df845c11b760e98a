"""CPU of a call's pixels between an HTTP worker and the core: pickled over the socket against shared memory.

A worker process sends calls carrying decoded photos to a receiving process over a Unix socket, as the HTTP
workers call the core (app.core): `pickled` sends them as multiprocessing.connection pickles them, `shared` through
app.core.pixels (the arrays in a shared buffer, the message holding their place). Printed per run: the
receiver's CPU and wall milliseconds per call and the bytes written to the socket per call; runs alternate
(A B A B) and the last line gives shared / pickled for the receiver's CPU. The receiver answers each call, as the
core does, before the next one is sent.

    python -m bench.pixels [--calls 2000] [--rounds 2] [--sides 640,1280]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from multiprocessing import Process
from multiprocessing.connection import Client, Connection, Listener
from pathlib import Path

import numpy as np

from app.core.pixels import PixelReceiver, PixelSender

MODES = ("pickled", "shared")


def _send(address: str, mode: str, calls: int, side: int) -> None:
    connection = Client(address, family="AF_UNIX")
    pixels = np.random.default_rng(0).integers(0, 255, (side * 3 // 4, side, 3), dtype=np.uint8)
    sender = PixelSender(connection)
    for _ in range(calls):
        message = ("search", ([pixels],), {"top_k": 5})
        if mode == "shared":
            sender.send(message)
        else:
            connection.send(message)
        connection.recv()
        sender.answered()
    connection.close()


def measure(mode: str, calls: int, side: int) -> tuple[float, float]:
    """The receiver's CPU and wall ms per call."""
    with tempfile.TemporaryDirectory(prefix="oceano-pixels-") as tmp:
        address = str(Path(tmp) / "bench.sock")
        with Listener(address, family="AF_UNIX") as listener:
            sender = Process(target=_send, args=(address, mode, calls, side))
            sender.start()
            connection: Connection = listener.accept()
            receiver = PixelReceiver(connection)
            started, cpu = time.perf_counter(), time.process_time()
            for _ in range(calls):
                method, (images,), _ = receiver.recv() if mode == "shared" else connection.recv()
                assert images[0].shape[1] == side
                connection.send((True, []))
                receiver.answered()
            wall, cpu = time.perf_counter() - started, time.process_time() - cpu
            sender.join()
            connection.close()
    return cpu / calls * 1e3, wall / calls * 1e3


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.pixels", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=2000, help="calls per run (default 2000)")
    parser.add_argument("--rounds", type=int, default=2, help="alternated rounds (default 2)")
    parser.add_argument("--sides", default="640,1280", help="photo widths, 4:3 (default 640,1280)")
    args = parser.parse_args(argv)
    print(f"{os.cpu_count()} CPUs, load average at start {os.getloadavg()[0]:.2f}")
    print(f"{'side':>5} {'mode':>8} {'MB/call':>8} {'CPU ms/call':>12} {'wall ms/call':>13}")
    for side in [int(v) for v in args.sides.split(",")]:
        cpu: dict[str, list[float]] = {mode: [] for mode in MODES}
        megabytes = side * (side * 3 // 4) * 3 / 1e6
        for _ in range(args.rounds):
            for mode in MODES:
                cpu_ms, wall_ms = measure(mode, args.calls, side)
                cpu[mode].append(cpu_ms)
                print(f"{side:>5} {mode:>8} {megabytes:>8.2f} {cpu_ms:>12.3f} {wall_ms:>13.3f}")
        ratio = statistics.fmean(cpu["shared"]) / statistics.fmean(cpu["pickled"])
        print(f"the receiver's CPU per call at {side} px, shared / pickled: {ratio:.2f}")


if __name__ == "__main__":
    main()
