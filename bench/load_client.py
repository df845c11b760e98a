"""The load of bench.overload, bench.workers and bench.gpu_load: closed-loop clients POSTing /api/search on
keep-alive connections of their own (asyncio streams, a request encoded once), and the CPU seconds a process spent."""

from __future__ import annotations

import asyncio
import os
import resource
from pathlib import Path

from bench.live import multipart
from bench.overload_report import Answer


def stat_cpu_seconds(stat: Path) -> float:
    """User + system CPU seconds so far of a process or a thread, from its /proc stat file (/proc/PID/stat or
    /proc/PID/task/TID/stat). Raises OSError when it is gone."""
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (/proc/PID/stat)."""
    return stat_cpu_seconds(Path(f"/proc/{pid}/stat"))


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Connection:
    """One keep-alive HTTP/1.1 connection on asyncio streams, for the load: it sends a request already encoded
    and reads the status line, the headers and the body (Content-Length or chunked). Much cheaper than an HTTP
    client library, so that 200 of them in one process do not make the load generator the bottleneck."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, data: bytes) -> tuple[int, dict[str, str]]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        try:
            self.writer.write(data)
            await self.writer.drain()
            status = int((await self.reader.readuntil(b"\r\n")).split(b" ", 2)[1])
            headers: dict[str, str] = {}
            while (line := await self.reader.readuntil(b"\r\n")) != b"\r\n":
                name, _, value = line.decode("latin-1").partition(":")
                headers[name.strip().lower()] = value.strip()
            if "content-length" in headers:
                await self.reader.readexactly(int(headers["content-length"]))
            elif headers.get("transfer-encoding", "").lower() == "chunked":
                while (size := int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)) > 0:
                    await self.reader.readexactly(size + 2)
                await self.reader.readuntil(b"\r\n")
        except BaseException:
            self.close()
            raise
        if headers.get("connection", "").lower() == "close":
            self.close()
        return status, headers

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def search_request(host: str, port: int, query: bytes) -> bytes:
    body, content_type = multipart({}, ("query.jpg", query, "image/jpeg"))
    return (
        f"POST /api/search HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


async def closed_loop(
    base_url: str,
    query: bytes,
    clients: int,
    warmup: float,
    duration: float,
    timeout: float,
    honor_retry_after: bool = False,
) -> tuple[list[Answer], list[float]]:
    """`clients` connections, each POSTing /api/search and sending its next request as soon as the last is
    answered, for warmup + duration seconds. Kept: the answers that arrived within the window after the warm-up
    (whenever their request was sent); requests in flight at the end are awaited (at most `timeout`: a client
    that left would be a disconnect, which is not what this measures) and dropped. Also returns how late this
    generator's own event loop was (a 0.1 s sleep, over and over: its lateness is added to every latency here).
    honor_retry_after: after a 503 a client waits what its Retry-After says (at most 10 s) before the next."""
    host, port = base_url.removeprefix("http://").rsplit(":", 1)
    data = search_request(host, int(port), query)  # encoded once, sent by every connection
    loop = asyncio.get_running_loop()
    start = loop.time()
    counted_from, end = start + warmup, start + warmup + duration
    answers: list[Answer] = []

    async def client() -> None:
        conn = Connection(host, int(port))
        try:
            while (sent := loop.time()) < end:
                headers: dict[str, str] = {}
                try:
                    status_code, headers = await asyncio.wait_for(conn.request(data), timeout)
                    status, retry_after = str(status_code), "retry-after" in headers
                except (
                    OSError,
                    asyncio.IncompleteReadError,
                    asyncio.LimitOverrunError,
                    TimeoutError,
                    ValueError,
                    IndexError,
                ) as exc:
                    status, retry_after = type(exc).__name__, False
                done = loop.time()
                if counted_from <= done <= end:
                    answers.append(Answer(status, done - sent, retry_after, done))
                if honor_retry_after and status == "503":
                    await asyncio.sleep(min(10.0, max(0.0, end - done), float(headers.get("retry-after") or 1)))
        finally:
            conn.close()

    async def ticker() -> list[float]:
        late: list[float] = []
        while loop.time() < end:
            before = loop.time()
            await asyncio.sleep(0.1)
            if before >= counted_from:
                late.append(loop.time() - before - 0.1)
        return late

    ticking = asyncio.create_task(ticker())
    await asyncio.gather(*(client() for _ in range(clients)))
    return answers, await ticking
