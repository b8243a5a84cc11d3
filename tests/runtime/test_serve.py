"""``isnet serve``: the real server on a free port, every endpoint and refusal, batching, draining, memory."""

from __future__ import annotations

import base64
import io
import json
import re
import signal
import socket
import struct
import subprocess
import sys
import time
import zlib
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from serving import Reply, call, free_port, post_image, running_server
from isnet.build_in.imageio import decode_image

ROOT = Path(__file__).resolve().parents[2]


def _mime(path: Path) -> str:
    return {"jpg": "image/jpeg", "jpeg": "image/jpeg", "png": "image/png"}[path.suffix.lower().lstrip(".")]


def _png(array: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".png", array)
    assert ok
    return data.tobytes()


def _gray(data: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)


def _big_photo(seed: int, hw=(1200, 1600)) -> bytes:
    rng = np.random.default_rng(seed)
    return _png(cv2.resize(rng.integers(0, 256, (hw[0] // 40, hw[1] // 40, 3), dtype=np.uint8), hw[::-1]))


@pytest.fixture(scope="module")
def server(lite_artifact, tmp_path_factory):
    with running_server(lite_artifact, tmp_path_factory.mktemp("serve"), "--max-batch", "4",
                        "--max-wait-ms", "30") as running:
        yield running


def test_invocations_answers_the_bytes_isnet_run_writes(server, lite_artifact, messy_folder, run_isnet, tmp_path):
    root, expected, broken = messy_folder
    masks = tmp_path / "masks"
    assert run_isnet("run", "--model", lite_artifact, "--image-dir", root, "--output-dir", masks).returncode == 3
    for relative in expected:
        image = root / relative
        reply = post_image(server.port, image.read_bytes(), content_type=_mime(image))
        assert reply.status == 200 and reply.headers["content-type"] == "image/png", (relative, reply.body[:200])
        assert reply.body == (masks / relative).with_suffix(".png").read_bytes(), relative
    # SageMaker clients often send application/x-image or octet-stream: the same answer.
    image = root / "plain.jpg"
    for content_type in ("application/x-image", "application/octet-stream"):
        reply = post_image(server.port, image.read_bytes(), content_type=content_type)
        assert reply.body == (masks / "plain.png").read_bytes(), content_type


def test_accept_chooses_png_npy_or_json(server, photo_folder):
    image = photo_folder / "p1.jpg"
    data = image.read_bytes()
    height, width = decode_image(image).shape[:2]
    png = post_image(server.port, data, content_type="image/jpeg").body
    for accept in ("*/*", "image/*", "text/html;q=0.5, image/png"):
        assert post_image(server.port, data, accept, "image/jpeg").body == png, accept
    # q=0 refuses a type, also where a wildcard would cover it.
    refused = post_image(server.port, data, "image/png;q=0, */*", "image/jpeg")
    assert refused.status == 200 and refused.headers["content-type"] == "application/json"
    assert post_image(server.port, data, "image/png;q=0, image/*", "image/jpeg").status == 406
    for accept in ("image/*;q=0, */*", "image/png;q=0.1, */*"):  # the most specific range gives PNG's quality
        assert post_image(server.port, data, accept, "image/jpeg").headers["content-type"] == "application/json"

    npy = post_image(server.port, data, "application/x-npy", "image/jpeg")
    assert npy.status == 200 and npy.headers["content-type"] == "application/x-npy"
    saliency = np.load(io.BytesIO(npy.body), allow_pickle=False)
    assert saliency.dtype == np.float32 and saliency.shape == (height, width)
    np.testing.assert_array_equal(np.clip(np.rint(saliency * 255), 0, 255).astype(np.uint8), _gray(png))

    answer = json.loads(post_image(server.port, data, "application/json", "image/jpeg").body)
    assert (answer["width"], answer["height"]) == (width, height)
    assert answer["model"] == "lite-test" and answer["precision"] == "fp32" and answer["backend"] == "onnxruntime"
    assert base64.b64decode(answer["mask_png_base64"]) == png
    assert answer["batch"] >= 1 and set(answer["timings_ms"]) == {"decode", "queue", "inference", "total"}
    assert all(value >= 0 for value in answer["timings_ms"].values())


def test_npz_and_npy_inputs_give_the_image_mask(server, photo_folder):
    image = photo_folder / "p2.jpg"
    png = post_image(server.port, image.read_bytes(), content_type="image/jpeg").body
    chw = np.ascontiguousarray(decode_image(image).transpose(2, 0, 1))  # what `isnet image2npz` stores
    npz, npy = io.BytesIO(), io.BytesIO()
    np.savez(npz, input_0=chw)
    np.save(npy, chw)
    assert post_image(server.port, npz.getvalue(), content_type="application/x-npz").body == png
    assert post_image(server.port, npy.getvalue(), content_type="application/x-npy").body == png
    assert post_image(server.port, npy.getvalue(), content_type="application/octet-stream").body == png
    wrong = io.BytesIO()
    np.save(wrong, chw.astype(np.float32))
    reply = post_image(server.port, wrong.getvalue(), content_type="application/x-npy")
    assert reply.status == 400 and "uint8 [3, H, W]" in json.loads(reply.body)["error"]


def test_refusals_are_one_line_json(server, photo_folder, tmp_path):
    data = (photo_folder / "p0.jpg").read_bytes()
    cases = {
        "type": (post_image(server.port, data, content_type="text/plain"), 415, "Content-Type"),
        "accept": (post_image(server.port, data, accept="text/html", content_type="image/jpeg"), 406, "image/png"),
        "truncated": (post_image(server.port, data[: len(data) // 2], content_type="image/jpeg"), 400, "truncated"),
        "not an image": (post_image(server.port, b"certainly not a picture", content_type="image/png"), 400,
                         "not a decodable image"),
        "empty": (post_image(server.port, b"", content_type="image/png"), 400, "empty"),
        "declared too large": (post_image(server.port, b"\0" * (7 * 1024 * 1024), content_type="image/png"), 413,
                               "--max-body-mb"),
        "chunked too large": (post_image(server.port, iter([b"\0" * (1 << 20)] * 7), content_type="image/png",
                                         chunked=True), 413, "--max-body-mb"),
        "path": (call(server.port, "GET", "/nowhere"), 404, "Not Found"),
        "method": (call(server.port, "GET", "/invocations"), 405, "Method Not Allowed"),
    }
    for name, (reply, status, words) in cases.items():
        assert reply.status == status, (name, reply.body[:300])
        assert reply.headers["content-type"] == "application/json", name
        message = json.loads(reply.body)["error"]
        assert words in message and "\n" not in message and "Traceback" not in message, (name, message)
    assert cases["method"][0].headers.get("allow") == "POST"
    # The server is still up and answering, and logged every refusal, those of the body limit too.
    assert post_image(server.port, data, content_type="image/jpeg").status == 200
    time.sleep(0.2)
    assert re.search(r"POST /invocations 413 \d+ ", server.log_text()) and re.search(r"POST /invocations 400 ", server.log_text())


def _raw_post(port: int, body: bytes, content_type: str, chunk: int | None = None) -> bytes:
    """A client that sends the whole request (headers and body, chunked when ``chunk``) before reading."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        head = f"POST /invocations HTTP/1.1\r\nHost: test\r\nContent-Type: {content_type}\r\n"
        if chunk is None:
            sock.sendall(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
        else:
            sock.sendall(f"{head}Transfer-Encoding: chunked\r\n\r\n".encode())
            for start in range(0, len(body), chunk):
                part = body[start:start + chunk]
                sock.sendall(b"%x\r\n%s\r\n" % (len(part), part))
            sock.sendall(b"0\r\n\r\n")
        reply = b""
        while data := sock.recv(1 << 16):
            reply += data
            if b"\r\n\r\n" in reply and b'"}' in reply:
                break
        return reply


def test_refusals_reach_clients_that_send_the_whole_body_first(server):
    import urllib.error
    import urllib.request

    big, small = b"\0" * (7 * 1024 * 1024), b"\0" * (2 * 1024 * 1024)
    cases = [(big, "image/png", 413, "--max-body-mb"), (small, "text/plain", 415, "Content-Type")]
    for body, content_type, status, words in cases:
        for _ in range(3):  # a reset is a race: every attempt must read the answer
            request = urllib.request.Request(f"http://127.0.0.1:{server.port}/invocations", data=body,
                                             headers={"Content-Type": content_type}, method="POST")
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(request, timeout=60)
            assert refused.value.code == status and words in json.loads(refused.value.read())["error"]
        reply = _raw_post(server.port, body, content_type)
        assert reply.startswith(f"HTTP/1.1 {status} ".encode()) and words.encode() in reply, reply[:200]
    # A chunked body passes the limit as it arrives: the client still reads the 413.
    reply = _raw_post(server.port, big, "image/png", chunk=1 << 20)
    assert reply.startswith(b"HTTP/1.1 413 ") and b"--max-body-mb" in reply, reply[:200]
    assert post_image(server.port, b"", content_type="image/png").status == 400  # still serving


def test_decompression_bombs_are_refused_from_their_headers(server):
    # 60 megapixels of one grey level: about 60 KB of PNG, 180 MB once decoded.
    bomb = _png(np.zeros((6000, 10000), np.uint8))
    assert len(bomb) < 1024 * 1024
    reply = post_image(server.port, bomb, content_type="image/png")
    assert reply.status == 413
    assert "60,000,000 pixels" in json.loads(reply.body)["error"]
    # The same in a compressed npz: 192 MB of zeros in about 200 KB.
    packed = io.BytesIO()
    np.savez_compressed(packed, input_0=np.zeros((3, 8000, 8000), np.uint8))
    assert len(packed.getvalue()) < 1024 * 1024
    reply = post_image(server.port, packed.getvalue(), content_type="application/x-npz")
    assert reply.status == 413 and "64,000,000 pixels" in json.loads(reply.body)["error"]
    # A PNG cut short after its first compressed bytes: the header says 100 MP (past Pillow's warning
    # level) or 400 MP (past its own refusal); both are this server's 413, not "truncated".
    for side in (10_000, 20_000):
        reply = post_image(server.port, _png_cut_short(side, side), content_type="image/png")
        assert reply.status == 413, (side, reply.body)
        assert "--max-pixels" in json.loads(reply.body)["error"]


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _png_cut_short(width: int, height: int) -> bytes:
    """An 8-bit gray PNG's signature, IHDR and a first IDAT chunk of zeros; no more data, no IEND."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
            + _png_chunk(b"IDAT", zlib.compress(bytes(width + 1))))


def test_a_stalled_upload_gets_408_and_frees_its_place(lite_artifact, photo_folder, tmp_path):
    data = (photo_folder / "p0.jpg").read_bytes()
    with running_server(lite_artifact, tmp_path, "--max-queue", "1", "--body-timeout", "1") as running:
        with socket.create_connection(("127.0.0.1", running.port), timeout=10) as stalled:
            stalled.sendall(b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
                            b"Content-Length: 100000\r\n\r\n" + data[:1000])
            time.sleep(0.3)
            # The stalled upload holds the only place meanwhile.
            assert post_image(running.port, data, content_type="image/jpeg").status == 503
            started = time.monotonic()
            answer = b""
            while b"}" not in answer and (chunk := stalled.recv(65536)):
                answer += chunk
            answer = answer.decode("latin-1")
            waited = time.monotonic() - started
        assert answer.startswith("HTTP/1.1 408"), answer[:200]
        assert "connection: close" in answer.lower()  # the stalled client's socket is closed, not kept
        assert "--body-timeout" in json.loads(answer.split("\r\n\r\n", 1)[1])["error"]
        assert waited < 5
        assert post_image(running.port, data, content_type="image/jpeg").status == 200


def test_access_log_has_method_path_status_bytes_and_latency(server, photo_folder):
    reply = post_image(server.port, (photo_folder / "p3.jpg").read_bytes(), content_type="image/jpeg")
    post_image(server.port, b"x", content_type="text/plain")
    time.sleep(0.2)
    log = server.log_text()
    assert re.search(rf"POST /invocations 200 {len(reply.body)} \d+\.\dms", log), log[-2000:]
    assert re.search(r"POST /invocations 415 \d+ \d+\.\dms", log)


def test_rembg_remove_endpoint(server, photo_folder):
    image = photo_folder / "p0.jpg"
    data = image.read_bytes()
    mask_png = post_image(server.port, data, content_type="image/jpeg").body
    boundary = "isnet-test-boundary"

    def form(only_mask: str | None) -> Reply:
        parts = [f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"p0.jpg\"\r\n"
                 f"Content-Type: image/jpeg\r\n\r\n".encode() + data + b"\r\n"]
        if only_mask is not None:
            parts.append(f"--{boundary}\r\nContent-Disposition: form-data; name=\"om\"\r\n\r\n{only_mask}\r\n".encode())
        body = b"".join(parts) + f"--{boundary}--\r\n".encode()
        return call(server.port, "POST", "/api/remove", body,
                    {"Content-Type": f"multipart/form-data; boundary={boundary}"})

    only_mask = form("true")
    assert only_mask.status == 200 and only_mask.body == mask_png
    cutout = form(None)
    assert cutout.status == 200 and cutout.headers["content-type"] == "image/png"
    rgba = np.asarray(Image.open(io.BytesIO(cutout.body)))
    assert rgba.shape[2] == 4
    np.testing.assert_array_equal(rgba[..., :3], decode_image(image))
    np.testing.assert_array_equal(rgba[..., 3], _gray(mask_png))
    missing = call(server.port, "POST", "/api/remove", f"--{boundary}--\r\n".encode(),
                   {"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert missing.status == 400 and "'file'" in json.loads(missing.body)["error"]
    malformed = call(server.port, "POST", "/api/remove", b"no form here", {"Content-Type": "multipart/form-data"})
    assert malformed.status == 400 and "error" in json.loads(malformed.body)


def test_concurrent_requests_are_batched_with_the_unbatched_answers(server, tmp_path):
    images = [_png(cv2.resize(np.random.default_rng(i).integers(0, 256, (8, 8, 3), dtype=np.uint8), (96, 80)))
              for i in range(8)]
    alone = [json.loads(post_image(server.port, data, "application/json").body) for data in images]
    assert all(answer["batch"] == 1 for answer in alone)
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda data: json.loads(post_image(server.port, data, "application/json").body),
                                 images))
    assert max(answer["batch"] for answer in together) > 1, [a["batch"] for a in together]
    assert [a["mask_png_base64"] for a in together] == [a["mask_png_base64"] for a in alone]


def test_full_queue_answers_503_with_retry_after(lite_artifact, tmp_path):
    images = [_big_photo(i) for i in range(8)]
    with running_server(lite_artifact, tmp_path, "--max-queue", "1", "--max-batch", "1") as running:
        with ThreadPoolExecutor(8) as pool:
            replies = list(pool.map(lambda data: post_image(running.port, data), images))
    statuses = sorted(reply.status for reply in replies)
    assert 200 in statuses and 503 in statuses, statuses
    busy = next(reply for reply in replies if reply.status == 503)
    assert busy.headers["retry-after"] == "1" and "busy" in json.loads(busy.body)["error"]


def test_sigterm_drains_requests_in_flight(lite_artifact, tmp_path):
    images = [_big_photo(i, (2000, 2400)) for i in range(6)]
    with running_server(lite_artifact, tmp_path, "--max-batch", "1") as running:
        with ThreadPoolExecutor(6) as pool:
            futures = [pool.submit(post_image, running.port, data) for data in images]
            # SIGTERM once the first answer is back: the others were sent and are being worked on.
            next(as_completed(futures))
            running.process.send_signal(signal.SIGTERM)
            started = time.monotonic()
            in_flight = sum(not future.done() for future in futures)
            replies = [future.result() for future in futures]
        assert in_flight >= 1
        assert running.process.wait(timeout=30) == 0
        assert time.monotonic() - started < 30
    assert [reply.status for reply in replies] == [200] * 6


def test_ping_is_503_until_the_model_answered_a_warm_up(u2netp, tmp_path):
    port = free_port()
    process = subprocess.Popen([str(Path(sys.executable).parent / "isnet"), "serve", "--model", str(u2netp),
                                "--port", str(port), "--max-batch", "8"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seen, early = [], []
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and (not seen or seen[-1][0] != 200):
            try:
                reply = call(port, "GET", "/ping", timeout=5)
                seen.append((reply.status, reply.body, reply.headers.get("retry-after")))
                if reply.status == 503 and not early:
                    early.append(post_image(port, _big_photo(0, (320, 320))))
            except OSError:
                time.sleep(0.02)
        statuses = [status for status, _, _ in seen]
        assert statuses and statuses[-1] == 200 and seen[-1][1] == b""
        assert 503 in statuses, statuses  # answered before the model was ready, and said so
        assert all(retry == "1" for status, _, retry in seen if status == 503)
        assert statuses.index(200) > statuses.index(503)
        # Invocations before readiness are refused the same way; after, they work.
        assert early and early[0].status == 503 and early[0].headers["retry-after"] == "1"
        assert post_image(port, _big_photo(0, (320, 320))).status == 200
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_command_errors_are_one_line(run_isnet, lite_artifact, tmp_path):
    missing = run_isnet("serve", "--model", tmp_path / "nothing-here")
    assert missing.returncode == 2 and "model not found" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1
    for option, value in (("--max-wait-ms", "inf"), ("--max-wait-ms", "nan"), ("--body-timeout", "0")):
        refused = run_isnet("serve", "--model", lite_artifact, option, value, timeout=60)
        assert refused.returncode == 2 and option in refused.stderr, (option, value, refused.stderr)
    with running_server(lite_artifact, tmp_path) as running:
        taken = run_isnet("serve", "--model", lite_artifact, "--port", running.port, timeout=60)
    assert taken.returncode == 2 and "cannot listen on 127.0.0.1" in taken.stderr
    assert "Traceback" not in taken.stderr
    # Without the serve extra: one line naming it.
    blocked = subprocess.run([sys.executable, "-c", "import sys; sys.modules['uvicorn'] = None; "
                              "from isnet.tools.cli import main; sys.exit(main(['serve', '--model', sys.argv[1]]))",
                              str(lite_artifact)], capture_output=True, text=True, timeout=120)
    assert blocked.returncode == 2 and "pip install 'isnet[serve]'" in blocked.stderr
    assert len(blocked.stderr.strip().splitlines()) == 1


# -- the serving image -----------------------------------------------------------------------------

def _dockerfile_packages() -> set[str]:
    text = (ROOT / "Dockerfile").read_text()
    installs = " ".join(re.findall(r"pip install ([^&\n]*)", text))
    words = [word.strip("'\"") for word in installs.split()]
    return {re.split(r"[<>=\[]", word)[0].lower() for word in words
            if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._\-]*([<>=\[].*)?", word)}


def _with_requirements(packages: set[str]) -> set[str]:
    """``packages`` and everything they require (installed versions, extras left out), normalised names."""
    from importlib import metadata

    def norm(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    seen, todo = set(), [norm(p) for p in packages]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        todo += [norm(re.split(r"[ ;<>=!~\[(]", r, maxsplit=1)[0]) for r in requires if "extra ==" not in r]
    return seen


def test_dockerfile_serves_without_pytorch():
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim", text, re.M)
    assert 'ENTRYPOINT ["isnet"]' in text and 'CMD ["serve"]' in text  # `docker run IMAGE serve`
    assert "ISNET_SERVE_HOST=0.0.0.0" in text and "EXPOSE 8080" in text
    assert "--no-deps" in text  # isnet itself without its build-time dependencies (PyTorch among them)
    packages = _dockerfile_packages()
    assert "torch" not in _with_requirements(packages), packages
    assert {"onnxruntime", "starlette", "uvicorn", "python-multipart"} <= packages


SERVE_ONE_REQUEST = """
import asyncio, json, re, sys
from importlib import metadata

# Only what the image holds can be imported: the standard library, isnet and the allowed distributions.
allowed = set(json.loads(sys.argv[3])) | {"isnet"}
owners = metadata.packages_distributions()

class ImageOnly:
    def find_spec(self, name, path=None, target=None):
        top = name.split(".")[0]
        dists = {re.sub(r"[-_.]+", "-", d).lower() for d in owners.get(top, [])}
        if top in sys.stdlib_module_names or top.startswith("_") or not dists or dists & allowed:
            return None
        raise ModuleNotFoundError(f"No module named '{name}' (not in the serving image)", name=name)

sys.meta_path.insert(0, ImageOnly())
from isnet.runtime.serving import create_app

async def main(model, image):
    failed, sent = [], []
    app = create_app(model, on_load_error=failed.append)
    scope = {"type": "http", "method": "POST", "path": "/invocations", "raw_path": b"/invocations",
             "query_string": b"", "headers": [(b"content-type", b"image/jpeg")], "http_version": "1.1",
             "scheme": "http", "server": ("test", 80), "client": ("test", 1), "root_path": ""}
    async def receive():
        return {"type": "http.request", "body": open(image, "rb").read(), "more_body": False}
    async def send(message):
        sent.append(message)
    async with app.router.lifespan_context(app):
        while app.state.serving.model is None and not failed:
            await asyncio.sleep(0.05)
        if failed:
            sys.exit(failed[0])
        await app(scope, receive, send)
    print(json.dumps({"status": sent[0]["status"], "torch": "torch" in sys.modules}))

asyncio.run(main(*sys.argv[1:3]))
"""


def _answer_with_only_the_image(artifact: Path, image: Path, extra: set[str] = frozenset()):
    allowed = sorted(_with_requirements(_dockerfile_packages() | extra))
    return subprocess.run([sys.executable, "-c", SERVE_ONE_REQUEST, str(artifact), str(image), json.dumps(allowed)],
                          capture_output=True, text=True, timeout=120)


def test_serving_answers_with_only_what_the_image_holds(lite_artifact, photo_folder):
    """With nothing importable but the standard library, isnet and the Dockerfile's packages (and what
    they require), the app loads an artifact and answers a request: no PyTorch, no build tools."""
    result = _answer_with_only_the_image(lite_artifact, photo_folder / "p0.jpg")
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {"status": 200, "torch": False}



def test_openvino_artifacts_serve_with_only_the_openvino_extra(lite_onnx, photo_folder, tmp_path):
    """The image built with ``--build-arg EXTRA=openvino`` serves OpenVINO artifacts: opening one needs
    the openvino package, not NNCF, ONNX or the calibration code."""
    pytest.importorskip("openvino", reason="the openvino extra is not installed")
    import yaml

    from isnet.build_in import build_artifact, load_build_config

    config = {"name": "ov_fp32", "frontend": {"checkpoint": str(lite_onnx), "shape": {"input": [1, 3, 64, 64]}},
              "backend": {"type": "openvino", "dtype": "fp32"}, "workspace": {"path": str(tmp_path)}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    artifact = build_artifact(load_build_config(tmp_path / "c.yaml")).artifact_dir
    assert "openvino" not in _dockerfile_packages()  # an extra of the image, not in it by default
    result = _answer_with_only_the_image(artifact, photo_folder / "p0.jpg", {"openvino"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {"status": 200, "torch": False}


@pytest.mark.slow
def test_memory_stays_flat_under_sustained_load(lite_artifact, tmp_path):
    psutil = pytest.importorskip("psutil")
    images = [_big_photo(i, (600 + 40 * i, 800 - 30 * i)) for i in range(8)]

    def load(running, count):
        with ThreadPoolExecutor(8) as pool:
            return [reply.status for reply in pool.map(lambda i: post_image(running.port, images[i % 8]),
                                                        range(count))]

    with running_server(lite_artifact, tmp_path) as running:
        process = psutil.Process(running.process.pid)
        assert set(load(running, 64)) == {200}  # warm-up: every size, every thread, the allocator's pools
        before = process.memory_info().rss
        assert set(load(running, 300)) == {200}
        grown = process.memory_info().rss - before
    assert grown < 50 * 1024 * 1024, f"RSS grew by {grown / 1024 / 1024:.1f} MB over 300 requests"
