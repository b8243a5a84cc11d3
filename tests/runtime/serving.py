"""Helpers for the serving tests: start the real ``isnet serve`` on a free port, and talk HTTP to it."""

from __future__ import annotations

import contextlib
import http.client
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest



def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes


def call(port: int, method: str, path: str, body=None, headers: dict | None = None, timeout: float = 60,
         chunked: bool = False) -> Reply:
    """One HTTP request on a new connection; the whole reply (any status)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request(method, path, body=body, headers=headers or {}, encode_chunked=chunked)
        response = connection.getresponse()
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
    finally:
        connection.close()


def post_image(port: int, data: bytes, accept: str | None = None, content_type: str = "image/png", **kw) -> Reply:
    headers = {"Content-Type": content_type}
    if accept:
        headers["Accept"] = accept
    return call(port, "POST", "/invocations", data, headers, **kw)


@dataclass
class Server:
    port: int
    process: subprocess.Popen
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")


@contextlib.contextmanager
def running_server(model: Path, tmp_path: Path, *options: str, ready_timeout: float = 90) -> Iterator[Server]:
    """``isnet serve --model MODEL OPTIONS`` on a free port, yielded once ``/ping`` answers 200; stopped after."""
    port = free_port()
    log = tmp_path / f"serve-{port}.log"
    with open(log, "w") as handle:
        process = subprocess.Popen([str(Path(sys.executable).parent / "isnet"), "serve", "--model", str(model), "--port", str(port), *options],
                                   stdout=handle, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    server = Server(port, process, log)
    try:
        deadline = time.monotonic() + ready_timeout
        while True:
            if process.poll() is not None:
                pytest.fail(f"isnet serve exited with {process.returncode}:\n{server.log_text()}")
            with contextlib.suppress(OSError):
                if call(port, "GET", "/ping", timeout=5).status == 200:
                    break
            if time.monotonic() > deadline:
                pytest.fail(f"isnet serve was not ready after {ready_timeout} s:\n{server.log_text()}")
            time.sleep(0.05)
        yield server
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
