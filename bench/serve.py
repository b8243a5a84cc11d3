"""`isnet serve` under load, batching on and off, against rembg's own server on the same model file.

    python bench/serve.py [--work /tmp/isnet-bench-serve] [--seconds 20] [--clients 1,4,16]

The pretrained U^2-Netp (rembg's u2netp.onnx) built int8 (``int8_max`` preset, rembg's pre-processing,
calibrated on ECSSD 0001-0050) and served by ``isnet serve`` with batching (``--max-batch 8``) and
without (``--max-batch 1``); the fp32 file served by ``rembg s`` (installed by this script in a venv
of its own, pointed at the cached model so it downloads nothing). Every server gets the same load
in one run: N clients, each on a keep-alive connection, posting ECSSD pictures 0051-0150 in turn to
``/api/remove`` with ``om=true`` (rembg's API, which both serve; the answer is the mask PNG) for
``--seconds`` seconds per client count. Printed: requests/s, latency p50/p99, errors, and the
server's RSS after a warm-up and after all its runs.
"""

from __future__ import annotations

import argparse
import http.client
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import psutil
from _common import REMBG, build_preset, ecssd_work_folder, markdown, rembg_venv, split_ecssd
from pretrained import fetch_u2netp

WARMUP_REQUESTS = 32


def multipart(image: Path) -> tuple[bytes, str]:
    """rembg's form: the picture as field ``file``, ``model=u2netp`` (rembg's choice of model), ``om=true``."""
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{image.name}"\r\n'
             f"Content-Type: image/jpeg\r\n\r\n".encode() + image.read_bytes() + b"\r\n"]
    for name, value in (("model", "u2netp"), ("om", "true")):
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def load(port: int, bodies: list[tuple[bytes, str]], clients: int, seconds: float) -> dict:
    """``clients`` threads posting ``bodies`` in turn for ``seconds``; latencies of the answered requests."""
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds

    def client(index: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        turn = index
        while time.perf_counter() < stop_at:
            body, content_type = bodies[turn % len(bodies)]
            turn += clients
            started = time.perf_counter()
            try:
                connection.request("POST", "/api/remove", body, {"Content-Type": content_type})
                response = connection.getresponse()
                response.read()
                ok = response.status == 200
            except (OSError, http.client.HTTPException):
                ok = False
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            with lock:
                if ok:
                    latencies.append(time.perf_counter() - started)
                else:
                    errors[0] += 1
        connection.close()

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    ms = np.array(latencies) * 1000
    return {"rps": len(latencies) / elapsed, "p50": float(np.percentile(ms, 50)) if len(ms) else float("nan"),
            "p99": float(np.percentile(ms, 99)) if len(ms) else float("nan"), "errors": errors[0],
            "requests": len(latencies)}


def wait_ready(port: int, process: subprocess.Popen, path: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"bench/serve.py: the server exited with {process.returncode}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            connection.request("GET", path)
            if connection.getresponse().status < 500:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"bench/serve.py: the server on port {port} was not ready after {timeout} s")


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def measure(label: str, command: list[str], ready_path: str, port: int, bodies, client_counts, seconds,
            env: dict, log: Path) -> list[list[str]]:
    print(f"{label}: starting", file=sys.stderr, flush=True)
    with open(log, "w") as handle:
        process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=env)
    try:
        wait_ready(port, process, ready_path)
        server = psutil.Process(process.pid)
        warm = load(port, bodies[:WARMUP_REQUESTS], 4, 5.0)  # sessions, pools, every thread
        if warm["errors"] or not warm["requests"]:
            raise SystemExit(f"bench/serve.py: {label} fails requests during warm-up (log: {log})")
        rss_before = server.memory_info().rss
        rows = []
        for clients in client_counts:
            result = load(port, bodies, clients, seconds)
            print(f"{label} x{clients}: {result}", file=sys.stderr, flush=True)
            rows.append([label, str(clients), f"{result['rps']:.2f}", f"{result['p50']:.0f}", f"{result['p99']:.0f}",
                         str(result["errors"])])
        rss_after = server.memory_info().rss
        for row in rows:
            row += [f"{rss_before / 2**20:.0f}", f"{rss_after / 2**20:.0f}"]
        return rows
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "isnet-bench-serve")
    parser.add_argument("--seconds", type=float, default=20.0, help="load per client count (default 20)")
    parser.add_argument("--clients", default="1,4,16", help="concurrent clients (default 1,4,16)")
    parser.add_argument("--images", type=int, default=100, help="ECSSD pictures from 0051 on (default 100)")
    args = parser.parse_args()
    from isnet.runtime import host_info

    work = ecssd_work_folder(args.work, "bench/serve.py")
    model = fetch_u2netp()
    calib, evaluation = split_ecssd(work, count=args.images)
    artifact = build_preset("u2netp_int8_max", "int8_max", model, calib, work)
    bodies = [multipart(image) for image in sorted((evaluation / "image").iterdir())]
    client_counts = [int(c) for c in args.clients.split(",")]
    isnet = str(Path(sys.executable).parent / "isnet")
    rembg = rembg_venv(work)
    home = work / "u2net-home"
    home.mkdir(exist_ok=True)
    shutil.copyfile(model, home / "u2netp.onnx")

    rows = []
    for label, batch in (("isnet int8, batching (--max-batch 8)", "8"), ("isnet int8, no batching", "1")):
        port = free_port()
        rows += measure(label, [isnet, "serve", "--model", str(artifact), "--port", str(port), "--max-batch", batch],
                        "/ping", port, bodies, client_counts, args.seconds, dict(os.environ), work / f"isnet-{batch}.log")
    port = free_port()
    rows += measure(f"rembg {REMBG.split('==')[1]} s (fp32)", [str(rembg), "s", "--host", "127.0.0.1", "--port", str(port), "--no-ui", "-l", "warning"],
                    "/docs", port, bodies, client_counts, args.seconds, {**os.environ, "U2NET_HOME": str(home)},
                    work / "rembg.log")

    host = host_info()
    print(f"\nU^2-Netp, {len(bodies)} ECSSD pictures posted to /api/remove (om=true), {args.seconds:g} s per "
          f"client count; {host['cpu']}, {host['logical_cores']} threads, Python {platform.python_version()}; "
          "load generator on the same host")
    print(markdown(["server", "clients", "requests/s", "p50 ms", "p99 ms", "errors", "RSS MB after warm-up",
                    "RSS MB at the end"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
