"""A live service for the benchmarks: `python -m app` in a subprocess on a free port of 127.0.0.1, with its state
(STATE_DIR, QDRANT_PATH, THUMBS_DIR) under a temporary folder, and its memory read from /proc.

The service runs from `app_dir` (default: this checkout): the subprocess's working directory is that tree, so its
`app` package wins over the one the virtual environment has installed (`app_package_file` says which one a
subprocess there imports).
"""

from __future__ import annotations

import logging
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

logger = logging.getLogger("bench.live")
REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def proc_status_kb(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of a process, in kB."""
    text = Path(f"/proc/{pid}/status").read_text()
    return {key: int(value) for key, value in re.findall(r"^(VmRSS|VmHWM):\s+(\d+) kB", text, re.M)}


def reset_peak(pid: int) -> bool:
    try:  # "5" resets VmHWM to the current RSS (Linux 4.0+, same user)
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def server_env(app_dir: Path, state: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {
        **os.environ,
        "STATE_DIR": str(state),
        "QDRANT_PATH": str(state / "qdrant"),
        "THUMBS_DIR": str(state / "thumbs"),
        "LOG_LEVEL": "warning",
        # app_dir first; what was on the path stays after it (the GPU machine's packages come through PYTHONPATH)
        "PYTHONPATH": os.pathsep.join(p for p in (str(app_dir), os.environ.get("PYTHONPATH", "")) if p),
    }
    env.update(extra or {})
    return env


def app_package_file(app_dir: Path, env: Mapping[str, str] | None = None) -> str:
    """The `app/__init__.py` that `python -m app` run from `app_dir` imports (it must be app_dir's own)."""
    out = subprocess.run(
        [sys.executable, "-c", "import app; print(app.__file__)"],
        cwd=app_dir,
        env=dict(env) if env is not None else None,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if out.returncode != 0:
        raise SystemExit(f"cannot import app from {app_dir}: {out.stderr.strip()}")
    return out.stdout.strip()


def multipart(fields: dict[str, str], file: tuple[str, bytes, str], field_name: str = "file") -> tuple[bytes, str]:
    """A multipart/form-data body with `fields` and one file part (name, bytes, content type), and its
    Content-Type header."""
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode() for k, v in fields.items()
    ]
    name, data, ctype = file
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{field_name}"; filename="{name}"\r\n'
        f"Content-Type: {ctype}\r\n\r\n".encode()
        + data
        + b"\r\n"
    )
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    base_url: str
    state: Path
    app_dir: Path
    warm_rss_kb: int = 0
    peak_resettable: bool = False

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def thumbs_dir(self) -> Path:
        return self.state / "thumbs"

    @property
    def log_path(self) -> Path:
        return self.state / "server.log"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def memory_kb(self) -> dict[str, int]:
        """{"VmRSS": ..., "VmHWM": ...} of the running service; empty once it has exited."""
        return proc_status_kb(self.pid) if self.alive() else {}

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def start_server(
    app_dir: Path,
    state: Path,
    port: int = 0,
    timeout: float = 180.0,
    env: Mapping[str, str] | None = None,
    module: str = "app",
) -> Server:
    """Start `python -m app` (or another `module` taking --host and --port and answering /health, such as a
    baseline service) from app_dir with its state under `state`, wait for /health 200 (at most `timeout`
    seconds), then record its warm RSS and reset its peak where the kernel allows."""
    port = port or free_port()
    state.mkdir(parents=True, exist_ok=True)
    log = (state / "server.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", module, "--host", "127.0.0.1", "--port", str(port)],
        cwd=app_dir,
        env=server_env(app_dir, state, env),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()  # the child holds its own descriptor
    server = Server(proc, f"http://127.0.0.1:{port}", state, app_dir)
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=server.base_url, timeout=5) as http:
        while True:
            try:
                if http.get("/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                stop_server(server)
                raise SystemExit(f"the service did not start; its log:\n{server.log_tail()}")
            time.sleep(0.3)
    time.sleep(1.0)  # let start-up allocations settle before taking the warm figure
    server.warm_rss_kb = proc_status_kb(proc.pid)["VmRSS"]
    server.peak_resettable = reset_peak(proc.pid)
    logger.info(
        "service pid %d (%s) up at %s, warm RSS %.0f MB", proc.pid, app_dir, server.base_url, server.warm_rss_kb / 1024
    )
    return server


def stop_server(server: Server) -> None:
    if server.proc.poll() is not None:
        return
    server.proc.terminate()
    try:
        server.proc.wait(30)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        server.proc.wait(10)


@contextmanager
def live_server(
    app_dir: Path = REPO,
    *,
    env: Mapping[str, str] | None = None,
    port: int = 0,
    timeout: float = 180.0,
    prefix: str = "oceano-bench-",
    state: Path | None = None,
) -> Iterator[Server]:
    """A service with fresh state, stopped on exit: in a temporary folder (removed on exit), or in `state` (kept,
    for a look at its files and server.log afterwards)."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        server = start_server(app_dir.resolve(), state or Path(tmp), port, timeout, env)
        try:
            yield server
        finally:
            stop_server(server)
