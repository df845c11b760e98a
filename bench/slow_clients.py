"""Slow clients against the real service, directly and through nginx (deploy/nginx.conf): what /health answers
meanwhile, whether a slow upload is ever cut off, and whether a key sent in a URL lands in the log.

For each --app-dir (e.g. main's code unpacked with git archive, then this checkout), in turn:
  1. starts `python -m app` (its defaults), with a planted API key made by `python -m app.keys`;
  2. slow heads: --slow connections (from --addresses loopback addresses, 127.0.2.x) each sending a request head
     one byte a second, never finishing it, reconnecting a second after the server closes one, for --seconds; meanwhile
     GET /health every 0.25 s on a fresh connection: its answers are counted (200, 503, errors);
  3. a slow body, started a second before them: one multipart POST /api/search announcing 1 MB and sending 1 KB
     a second, for at most --body-seconds: its answer and when the connection was closed, or "still open";
  4. /ws?key=PLANTED, /ws?key=<unknown key>, GET /status?key=PLANTED: then the lines of the service's log that
     contain either key are counted;
  5. with --nginx (nginx installed), the same 2 and 3 through nginx run with that checkout's deploy/nginx.conf (plain
     port for the heads and /health, TLS port for the body), worker_connections --nginx-worker-connections.

Attacks stay on loopback and are bounded in count and time. Figures are printed, not judged.

    python -m bench.slow_clients --app-dir /tmp/main-code --app-dir . [--slow 1100] [--addresses 1] [--nginx]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import secrets
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.live import REPO, Server, free_port, server_env, start_server, stop_server

logger = logging.getLogger("bench.slow_clients")
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


@dataclass
class HeadAttack:
    health: Counter[str] = field(default_factory=Counter)  # /health answers during the attack
    opened: int = 0  # connections the attackers opened (first ones and reconnections)
    closed_by_server: int = 0
    peak_open: int = 0


@dataclass
class BodyAttack:
    status: str = "no answer"
    closed_after_s: float | None = None
    sent_bytes: int = 0


async def slow_head(host: str, port: int, source: str, stop: float, attack: HeadAttack, live: list[int]) -> None:
    """One attacker slot: a connection that sends a head one byte a second; reconnects when closed."""
    head = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 100_000
    while time.monotonic() < stop:
        try:
            reader, writer = await asyncio.open_connection(host, port, local_addr=(source, 0))
        except OSError:
            await asyncio.sleep(1)
            continue
        attack.opened += 1
        live[0] += 1
        attack.peak_open = max(attack.peak_open, live[0])
        try:
            for byte in head:
                if time.monotonic() >= stop:
                    return
                writer.write(bytes([byte]))
                await writer.drain()
                try:
                    data = await asyncio.wait_for(reader.read(4096), 1.0)
                except TimeoutError:
                    continue
                if not data or reader.at_eof():
                    attack.closed_by_server += 1
                    break
        except OSError:
            attack.closed_by_server += 1
        finally:
            live[0] -= 1
            writer.close()
        await asyncio.sleep(1)  # then connects again, as a patient attacker would


async def probe_health(url: str, stop: float, attack: HeadAttack, verify: ssl.SSLContext | bool = True) -> None:
    while time.monotonic() < stop:
        try:
            async with httpx.AsyncClient(timeout=5, verify=verify) as http:
                attack.health[str((await http.get(f"{url}/health")).status_code)] += 1
        except httpx.TransportError as exc:
            attack.health[type(exc).__name__] += 1
        await asyncio.sleep(0.25)


async def slow_body(host: str, port: int, seconds: float, tls: ssl.SSLContext | None) -> BodyAttack:
    out = BodyAttack()
    started = time.monotonic()
    reader, writer = await asyncio.open_connection(host, port, ssl=tls, server_hostname="127.0.0.1" if tls else None)
    writer.write(
        b"POST /api/search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=b\r\n"
        b'Content-Length: 1048576\r\n\r\n--b\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n'
        b"Content-Type: image/jpeg\r\n\r\n\xff\xd8\xff"
    )
    answer = b""
    try:
        while time.monotonic() - started < seconds:
            writer.write(b"\0" * 1024)
            await writer.drain()
            out.sent_bytes += 1024
            try:
                data = await asyncio.wait_for(reader.read(4096), 1.0)
            except TimeoutError:
                continue
            if not data:
                out.closed_after_s = time.monotonic() - started
                break
            answer += data
    except OSError:
        out.closed_after_s = time.monotonic() - started
    finally:
        writer.close()
    if answer:
        out.status = answer.split(b"\r\n", 1)[0].decode("latin-1")
    return out


async def attack(
    head_host: str,
    head_port: int,
    health_url: str,
    body_port: int,
    args: argparse.Namespace,
    tls: ssl.SSLContext | None = None,
) -> tuple[HeadAttack, BodyAttack]:
    heads = HeadAttack()
    # The body first: its request is in before the heads can fill an unguarded server's connection limit.
    body_task = asyncio.create_task(slow_body("127.0.0.1", body_port, args.body_seconds, tls))
    await asyncio.sleep(1)
    stop = time.monotonic() + args.seconds
    live = [0]
    sources = [f"127.0.2.{1 + i % args.addresses}" for i in range(args.slow)]
    tasks = [asyncio.create_task(slow_head(head_host, head_port, s, stop, heads, live)) for s in sources]
    await asyncio.sleep(2)  # the attackers are connected before the probing starts
    await probe_health(health_url, stop, heads)
    await asyncio.gather(*tasks)
    return heads, await body_task


def make_key(server: Server) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "app.keys", "create", "--name", "planted", "--scope", "search"],
        cwd=server.app_dir,
        env=server_env(server.app_dir, server.state),
        capture_output=True,
        text=True,
        timeout=60,
    )
    if done.returncode != 0:
        raise SystemExit(done.stderr)
    return done.stdout.strip().splitlines()[-1]


def send_keys(server: Server, planted: str, unknown: str) -> None:
    from websockets.sync.client import connect

    ws_url = server.base_url.replace("http://", "ws://") + "/ws"
    for key in (planted, unknown):
        try:
            with connect(f"{ws_url}?key={key}", open_timeout=10, close_timeout=2) as ws:
                ws.recv(timeout=5)
        except Exception:  # noqa: BLE001 (refused or closed: only the log matters)
            pass
    with httpx.Client(base_url=server.base_url, timeout=10) as http:
        for key in (planted, unknown):
            http.get(f"/status?key={key}")


@contextmanager
def nginx_in_front(app_dir: Path, upstream: str, worker_connections: int) -> Iterator[tuple[int, int, ssl.SSLContext]]:
    """nginx with app_dir's deploy/nginx.conf (upstream, ports, certificate rewritten); yields (http port, https
    port, a TLS context trusting its certificate)."""
    with tempfile.TemporaryDirectory(prefix="oceano-slow-nginx-") as tmp:
        root = Path(tmp)
        cert, key = root / "fullchain.pem", root / "privkey.pem"
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
            + ["-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=bench"]
            + ["-addext", "subjectAltName=IP:127.0.0.1"],
            check=True,
            capture_output=True,
            timeout=60,
        )
        http_port, https_port = free_port(), free_port()
        site = (app_dir / "deploy" / "nginx.conf").read_text()
        for old, new in (
            ("server oceano-api:9100;", f"server {upstream};"),
            ("listen 80;", f"listen 127.0.0.1:{http_port};"),
            ("listen 443 ssl;", f"listen 127.0.0.1:{https_port} ssl;"),
            ("/etc/nginx/certs/fullchain.pem;", f"{cert};"),
            ("/etc/nginx/certs/privkey.pem;", f"{key};"),
        ):
            site = site.replace(old, new)
        (root / "site.conf").write_text(site)
        (root / "nginx.conf").write_text(
            f"user root;\ndaemon off;\npid {root}/nginx.pid;\nerror_log {root}/error.log warn;\n"
            f"worker_rlimit_nofile {4 * worker_connections};\n"
            f"events {{ worker_connections {worker_connections}; }}\n"
            f"http {{ access_log off; client_body_temp_path {root}/body; proxy_temp_path {root}/proxy;\n"
            f"include {root}/site.conf; }}\n"
        )
        proc = subprocess.Popen([NGINX, "-c", str(root / "nginx.conf"), "-p", str(root)])
        tls = ssl.create_default_context(cafile=str(cert))
        try:
            deadline = time.monotonic() + 20
            while True:
                try:
                    if httpx.get(f"http://127.0.0.1:{http_port}/health", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit(f"nginx did not start: {(root / 'error.log').read_text()[-2000:]}")
                time.sleep(0.2)
            yield http_port, https_port, tls
        finally:
            proc.terminate()
            proc.wait(10)


def report(label: str, heads: HeadAttack, body: BodyAttack, args: argparse.Namespace) -> None:
    answers = ", ".join(f"{k} x{v}" for k, v in sorted(heads.health.items()))
    closed = f"closed after {body.closed_after_s:.0f} s" if body.closed_after_s is not None else "still open"
    print(
        f"{label:<34} /health: {answers:<28} slow heads: {heads.opened} opened, {heads.closed_by_server} closed by "
        f"the server, {heads.peak_open} open at most | slow body ({body.sent_bytes // 1024} KB sent in "
        f"{args.body_seconds:.0f} s at most): {body.status!r}, {closed}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.slow_clients", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--app-dir", type=Path, action="append", help="checkout to run (repeat; default: this one)")
    parser.add_argument("--slow", type=int, default=1100, help="slow-head connections held at once (default 1100)")
    parser.add_argument("--addresses", type=int, default=1, help="loopback addresses they come from (default 1)")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of the slow-head attack (default 30)")
    parser.add_argument("--body-seconds", type=float, default=150.0, help="the slow body's patience (default 150)")
    parser.add_argument("--nginx", action="store_true", help="also through nginx (deploy/nginx.conf)")
    parser.add_argument("--nginx-worker-connections", type=int, default=1024, help="nginx's (default 1024)")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    for app_dir in [d.resolve() for d in (args.app_dir or [REPO])]:
        with tempfile.TemporaryDirectory(prefix="oceano-slow-") as tmp:
            server = start_server(app_dir, Path(tmp), env={"LOG_LEVEL": "info"})
            try:
                planted, unknown = make_key(server), "oc_" + secrets.token_urlsafe(32)
                port = int(server.base_url.rsplit(":", 1)[1])
                heads, body = asyncio.run(attack("127.0.0.1", port, server.base_url, port, args))
                report(f"{app_dir.name}: direct", heads, body, args)
                if args.nginx:
                    with nginx_in_front(app_dir, f"127.0.0.1:{port}", args.nginx_worker_connections) as (
                        http_port,
                        https_port,
                        tls,
                    ):
                        heads, body = asyncio.run(
                            attack("127.0.0.1", http_port, f"http://127.0.0.1:{http_port}", https_port, args, tls)
                        )
                        report(f"{app_dir.name}: through nginx", heads, body, args)
                send_keys(server, planted, unknown)
            finally:
                stop_server(server)
            log = server.log_path.read_text(errors="replace").splitlines()
            leaked = [line for line in log if planted in line or unknown in line]
            print(f"{app_dir.name}: log lines holding a key: {len(leaked)} of {len(log)}")
            for line in leaked[:4]:
                print(f"    {line[:160]}")


if __name__ == "__main__":
    main()
