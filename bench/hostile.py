"""Hostile uploads against the real service: what they cost it in time and memory.

Starts `python -m app` on a free port with its state under a temporary folder, waits for /health, records the
server's warm RSS, then sends, one attack after the other:
  1. N concurrent 40000x40000 PNG bombs (1.5 MB each) to POST /api/search;
  2. POST /api/search/batch with M flat 7000x7000 (49 MP) PNGs, each under every limit;
  3. a chunked (no Content-Length) upload of 40 MB to POST /api/search.
For each: the status codes, the slowest answer, and the server's peak RSS growth over its warm RSS (VmHWM -
warm VmRSS, from /proc; the peak is reset between attacks where the kernel allows). Figures are printed, not
judged: the per-request pixel budget that should bound them is wired elsewhere.

    python -m bench.hostile [--bombs 8] [--batch 32] [--chunked-mb 40] [--app-dir DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import struct
import tempfile
import time
import zlib
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.live import REPO, Server, free_port, proc_status_kb, reset_peak, start_server, stop_server

logger = logging.getLogger("bench.hostile")
MB = 2**20


# ------------------------------------------------------------------------------------------------ payloads
def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def zero_png(width: int, height: int, *, segment: int = 1 << 24) -> bytes:
    """A grey PNG of zeros without holding the raw pixels: one compressed segment, ended by a full flush so that
    it stands alone, repeated; then the rest and the adler32 of zeros (a stays 1, b counts the bytes)."""
    total = (width + 1) * height  # each row: filter byte 0, then the pixels
    count, rest = divmod(total, segment)
    block = b""
    if count:
        comp = zlib.compressobj(9, zlib.DEFLATED, -15)
        block = comp.compress(bytes(segment)) + comp.flush(zlib.Z_FULL_FLUSH)
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    tail = comp.compress(bytes(rest)) + comp.flush()
    idat = b"\x78\xda" + block * count + tail + struct.pack(">I", (total % 65521) << 16 | 1)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


async def chunked_multipart(size: int, *, boundary: str) -> AsyncIterator[bytes]:
    """A multipart body with one `file` part of `size` bytes, produced piece by piece: httpx sends it with
    Transfer-Encoding: chunked, so the server cannot refuse it from a Content-Length."""
    yield (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode()
    yield b"\xff\xd8\xff\xe0"
    sent = 4
    piece = bytes(MB)
    while sent < size:
        step = min(MB, size - sent)
        yield piece[:step]
        sent += step
    yield f"\r\n--{boundary}--\r\n".encode()


# ------------------------------------------------------------------------------------------------ attacks
@dataclass
class Outcome:
    name: str
    requests: int
    statuses: Counter[str] = field(default_factory=Counter)
    slowest_s: float = 0.0
    rss_before_mb: float = 0.0
    peak_growth_mb: float = 0.0
    rss_after_mb: float = 0.0
    detail: str = ""


async def timed(call: Callable[[], Coroutine[Any, Any, httpx.Response]]) -> tuple[str, float, str]:
    started = time.perf_counter()
    try:
        response = await call()
        status, text = str(response.status_code), response.text
    except httpx.HTTPError as exc:  # a dropped connection is an answer too
        status, text = type(exc).__name__, str(exc)
    return status, time.perf_counter() - started, text


async def bombs(http: httpx.AsyncClient, count: int) -> tuple[list[tuple[str, float, str]], str]:
    bomb = zero_png(40_000, 40_000)
    files = {"file": ("bomb.png", bomb, "image/png")}
    results = await asyncio.gather(*(timed(lambda: http.post("/api/search", files=files)) for _ in range(count)))
    return list(results), f"{len(bomb) / MB:.2f} MB each"


async def flat_batch(http: httpx.AsyncClient, count: int) -> tuple[list[tuple[str, float, str]], str]:
    flat = zero_png(7000, 7000)
    files = [("files", (f"flat{i}.png", flat, "image/png")) for i in range(count)]
    result = await timed(lambda: http.post("/api/search/batch", files=files))
    errors = result[2].count('"error":"') if result[0] == "200" else 0
    return [result], f"{len(flat) / 1024:.0f} KB each, {errors} refused in the answer"


async def chunked_upload(http: httpx.AsyncClient, size_mb: int) -> tuple[list[tuple[str, float, str]], str]:
    boundary = "oceano-hostile-bench"
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    result = await timed(
        lambda: http.post("/api/search", headers=headers, content=chunked_multipart(size_mb * MB, boundary=boundary))
    )
    return [result], "Transfer-Encoding: chunked"


async def run_attacks(server: Server, args: argparse.Namespace) -> list[Outcome]:
    plan: list[
        tuple[str, Callable[[httpx.AsyncClient], Coroutine[Any, Any, tuple[list[tuple[str, float, str]], str]]]]
    ] = [
        (f"{args.bombs} concurrent 40000x40000 PNG bombs", lambda http: bombs(http, args.bombs)),
        (f"batch of {args.batch} flat 49 MP PNGs", lambda http: flat_batch(http, args.batch)),
        (f"chunked {args.chunked_mb} MB upload", lambda http: chunked_upload(http, args.chunked_mb)),
    ]
    outcomes = []
    limits = httpx.Limits(max_connections=max(args.bombs, 1) + 2)
    async with httpx.AsyncClient(base_url=server.base_url, timeout=args.timeout, limits=limits) as http:
        for name, attack in plan:
            if server.peak_resettable:
                reset_peak(server.proc.pid)
            rss_before_mb = proc_status_kb(server.proc.pid)["VmRSS"] / 1024
            logger.info("attack: %s", name)
            results, detail = await attack(http)
            status = proc_status_kb(server.proc.pid) if server.proc.poll() is None else {}
            outcome = Outcome(
                name, len(results), Counter(r[0] for r in results), max(r[1] for r in results), detail=detail
            )
            outcome.rss_before_mb = rss_before_mb
            if status:
                outcome.peak_growth_mb = (status["VmHWM"] - server.warm_rss_kb) / 1024
                outcome.rss_after_mb = status["VmRSS"] / 1024
            else:
                outcome.detail += "; the service died"
            for code, _, text in results[:1]:
                logger.info("  first answer %s: %s", code, text[:200])
            outcomes.append(outcome)
            if server.proc.poll() is not None:
                break
    return outcomes


def print_table(server: Server, outcomes: list[Outcome]) -> None:
    print(
        f"warm RSS {server.warm_rss_kb / 1024:.0f} MB; peak reset between attacks: "
        f"{'yes' if server.peak_resettable else 'no (peaks are cumulative)'}"
    )
    print("peak RSS +MB: the service's peak RSS during the attack minus its warm RSS (VmHWM - warm VmRSS)")
    header = (
        f"{'attack':<40} {'status codes':<18} {'slowest s':>9} {'RSS before MB':>13} {'peak RSS +MB':>12} "
        f"{'RSS after MB':>12}  notes"
    )
    print(header)
    print("-" * len(header))
    for o in outcomes:
        codes = ", ".join(f"{code} x{n}" for code, n in sorted(o.statuses.items()))
        print(
            f"{o.name:<40} {codes:<18} {o.slowest_s:>9.2f} {o.rss_before_mb:>13.0f} {o.peak_growth_mb:>12.0f} "
            f"{o.rss_after_mb:>12.0f}  {o.detail}"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.hostile", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bombs", type=int, default=8, help="concurrent PNG bombs (default 8)")
    parser.add_argument("--batch", type=int, default=32, help="flat 49 MP PNGs in the batch request (default 32)")
    parser.add_argument("--chunked-mb", type=int, default=40, help="size of the chunked upload in MB (default 40)")
    parser.add_argument("--port", type=int, default=0, help="port for the service (default: a free one)")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for each answer")
    parser.add_argument("--start-timeout", type=float, default=180.0, help="seconds to wait for /health")
    parser.add_argument(
        "--app-dir",
        type=Path,
        default=REPO,
        help="checkout whose `app` package is run (default: this one), e.g. an older commit "
        "unpacked with git archive, to compare",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log each step")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    if not Path("/proc/self/status").is_file():
        raise SystemExit("this benchmark reads /proc/PID/status: Linux only")
    with tempfile.TemporaryDirectory(prefix="oceano-hostile-") as tmp:
        server = start_server(args.app_dir.resolve(), Path(tmp), args.port or free_port(), args.start_timeout)
        try:
            outcomes = asyncio.run(run_attacks(server, args))
        finally:
            stop_server(server)
    print_table(server, outcomes)


if __name__ == "__main__":
    main()
