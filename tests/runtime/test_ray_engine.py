"""``isnet run --engine ray``: the local engine's outputs and guarantees, on a local Ray instance and on a
two-node cluster simulated on this machine."""

from __future__ import annotations

import os
import signal
import threading
import time

import cv2
import pytest

from isnet.runtime import load_model, run_folder, synthetic_photo
from isnet.runtime.stream import mask_is_complete

ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'isnet[ray]')")


def _files(folder) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _write_photos(folder, count: int) -> int:
    folder.mkdir(parents=True)
    for index in range(count):
        rgb = cv2.resize(synthetic_photo(index, (30, 40)), (640, 480))
        assert cv2.imwrite(str(folder / f"{index:03d}.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return count


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray instance with 2 CPUs, shared by this module's tests."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_ray_engine_writes_the_local_engines_bytes(local_ray, lite_artifact, messy_folder, tmp_path):
    from isnet.runtime.ray_engine import run_folder_on_ray

    root, expected, broken = messy_folder
    local = run_folder(load_model(lite_artifact), root, tmp_path / "local", batch=2)
    reports, models = [], []
    on_ray = run_folder_on_ray(lite_artifact, root, tmp_path / "ray", batch=2, actors=2, threads_per_actor=1,
                               progress=lambda n, total: reports.append((n, total)),
                               on_model=lambda *told: models.append(told))
    assert models == [("lite-test", False)]  # the build's name, and no sigmoid added: told once
    assert len(reports) > 2  # the bar moves more than once on a small folder
    assert _files(tmp_path / "ray") == _files(tmp_path / "local")  # masks, names, sub-folders, failures.txt
    assert (on_ray.total, on_ray.done, on_ray.failed) == (local.total, len(expected), len(broken))
    assert sum(n for n, _ in reports) == len(expected) + len(broken) and {t for _, t in reports} == {on_ray.total}
    # --resume: nothing left to do; a deleted mask is the only one redone.
    (tmp_path / "ray" / "plain.png").unlink()
    again = run_folder_on_ray(lite_artifact, root, tmp_path / "ray", resume=True, actors=1)
    assert (again.done, again.skipped) == (1, len(expected) - 1)
    assert _files(tmp_path / "ray") == _files(tmp_path / "local")


def test_run_command_with_the_ray_engine(run_isnet, lite_artifact, photo_folder, tmp_path):
    """The real command, starting its own local Ray instance: same masks as the local engine, exit 0."""
    local = run_isnet("run", "--model", lite_artifact, "--image-dir", photo_folder, "--output-dir", tmp_path / "a")
    assert local.returncode == 0, local.stderr
    on_ray = run_isnet("run", "--engine", "ray", "--threads-per-actor", "1", "--model", lite_artifact,
                       "--image-dir", photo_folder, "--output-dir", tmp_path / "b", timeout=300)
    assert on_ray.returncode == 0, on_ray.stderr[-3000:]
    assert "done 6, skipped 0, failed 0 of 6 images" in on_ray.stdout
    assert _files(tmp_path / "b") == _files(tmp_path / "a")
    wrong = run_isnet("run", "--actors", "2", "--model", lite_artifact, "--image-dir", photo_folder,
                      "--output-dir", tmp_path / "c")
    assert wrong.returncode == 2 and "--engine ray only" in wrong.stderr


@pytest.mark.slow
def test_a_worker_killed_mid_run_leaves_every_mask_complete(local_ray, lite_artifact, tmp_path):
    import psutil

    from isnet.runtime.ray_engine import run_folder_on_ray

    images = tmp_path / "images"
    _write_photos(images, 160)
    output = tmp_path / "masks"
    killed = []

    def kill_a_worker() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed:
            if output.is_dir() and len(list(output.glob("*.png"))) >= 20:
                for process in psutil.process_iter(["pid", "cmdline"]):
                    if any("MaskWriter" in part for part in (process.info["cmdline"] or [])):
                        os.kill(process.info["pid"], signal.SIGKILL)
                        killed.append(process.info["pid"])
                        return
            time.sleep(0.01)

    killer = threading.Thread(target=kill_a_worker)
    killer.start()
    result = run_folder_on_ray(lite_artifact, images, output, actors=2, threads_per_actor=1)
    killer.join()
    assert killed, "no MaskWriter worker was found to kill"
    masks = sorted(output.glob("*.png"))
    assert result.done == 160 and result.failed == 0 and len(masks) == 160
    assert all(mask_is_complete(mask) for mask in masks)
    assert not list(output.glob(".*")), "temporary files left behind"
    expected = run_folder(load_model(lite_artifact), images, tmp_path / "local")
    assert expected.done == 160 and _files(output) == _files(tmp_path / "local")


def test_a_model_the_workers_cannot_open_is_a_one_line_error(local_ray, lite_artifact, photo_folder, tmp_path):
    from isnet.core import IsnetError
    from isnet.runtime.ray_engine import run_folder_on_ray

    # An artifact refuses --size; the driver does not load the model, so the actors find out.
    with pytest.raises(IsnetError) as error:
        run_folder_on_ray(lite_artifact, photo_folder, tmp_path / "masks", actors=1, threads_per_actor=1,
                          load_options={"size": (64, 64)})
    message = str(error.value)
    assert message.startswith("a Ray worker failed: ") and "drop --size" in message and "\n" not in message


def test_unreachable_cluster_and_file_output_are_one_line_errors(run_isnet, lite_artifact, photo_folder, tmp_path):
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    for address, words in ((f"127.0.0.1:{port}", f"cannot reach the Ray cluster at 127.0.0.1:{port}"),
                           (f"ray://127.0.0.1:{port}", "Ray Client (ray://) cannot run Ray Data jobs")):
        started = time.monotonic()
        result = run_isnet("run", "--engine", "ray", "--address", address, "--model", lite_artifact,
                           "--image-dir", photo_folder, "--output-dir", tmp_path / "masks", timeout=120)
        assert result.returncode == 2 and words in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and time.monotonic() - started < 60
    from_env = run_isnet("run", "--engine", "ray", "--model", lite_artifact, "--image-dir", photo_folder,
                         "--output-dir", tmp_path / "masks", env={"RAY_ADDRESS": f"127.0.0.1:{port}"}, timeout=120)
    assert from_env.returncode == 2 and "cannot reach the Ray cluster" in from_env.stderr
    assert not list((tmp_path / "masks").rglob("*.png"))  # refused before any mask was written
    taken = tmp_path / "masks.txt"
    taken.write_text("a file, not a folder")
    for engine in ("local", "ray"):
        result = run_isnet("run", "--engine", engine, "--model", lite_artifact, "--image-dir", photo_folder,
                           "--output-dir", taken)
        assert result.returncode == 2 and "is a file" in result.stderr, (engine, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1


# Loaded by every Python process of the command's own Ray instance (through PYTHONPATH): a Ray
# worker that is handed an image named poison* dies on the spot, every time it is tried.
_POISON = """
import os, sys
if any(arg.endswith("default_worker.py") for arg in sys.argv):
    from isnet.runtime import ray_engine
    _process_items = ray_engine.process_items

    def _poisoned(model, image_dir, output_dir, items, *args, **kwargs):
        items = list(items)
        if any(os.path.basename(item.relative).startswith("poison") for item in items):
            os._exit(17)
        return _process_items(model, image_dir, output_dir, items, *args, **kwargs)

    ray_engine.process_items = _poisoned
"""


@pytest.mark.slow
def test_a_worker_that_dies_on_every_try_stops_the_run(run_isnet, lite_artifact, tmp_path):
    images = tmp_path / "images"
    _write_photos(images, 8)
    (images / "000.png").rename(images / "poison.png")
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(_POISON)
    started = time.monotonic()
    result = run_isnet("run", "--engine", "ray", "--threads-per-actor", "1", "--model", lite_artifact,
                       "--image-dir", images, "--output-dir", tmp_path / "masks",
                       env={"PYTHONPATH": str(hook), "RAY_ADDRESS": ""}, timeout=300)
    assert result.returncode == 2, (result.stdout[-2000:], result.stderr[-3000:])
    assert "a Ray worker process died 4 times on the same images" in result.stderr.strip().splitlines()[-1]
    assert "Traceback" not in result.stderr
    assert time.monotonic() - started < 240
    masks = list((tmp_path / "masks").rglob("*"))
    assert all(mask_is_complete(mask) for mask in masks if mask.suffix == ".png")
    assert not [mask for mask in masks if mask.name.startswith(".")], "temporary files left behind"


def test_without_the_extra_the_error_names_it(lite_artifact, photo_folder, tmp_path):
    import subprocess
    import sys

    script = ("import sys; sys.modules['ray'] = None; from isnet.tools.cli import main; "
              "sys.exit(main(['run', '--engine', 'ray', '--model', sys.argv[1], '--image-dir', sys.argv[2], "
              "'--output-dir', sys.argv[3]]))")
    result = subprocess.run([sys.executable, "-c", script, str(lite_artifact), str(photo_folder), str(tmp_path / "m")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "pip install 'isnet[ray]'" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_ray_engine_on_a_two_node_cluster(lite_artifact, messy_folder, tmp_path):
    # Last in the file: it replaces the module's local instance with a cluster of its own.
    from ray.cluster_utils import Cluster

    from isnet.runtime.ray_engine import run_folder_on_ray

    root, expected, _ = messy_folder
    extra = _write_photos(root / "extra", 300)  # enough work that the second actor joins before it is done
    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    try:
        ray.init(address=cluster.address, log_to_driver=False)
        assert len([n for n in ray.nodes() if n["Alive"]]) == 2
        result = run_folder_on_ray(lite_artifact, root, tmp_path / "ray", actors=2, threads_per_actor=1)
    finally:
        ray.shutdown()
        cluster.shutdown()
    run_folder(load_model(lite_artifact), root, tmp_path / "local")
    assert _files(tmp_path / "ray") == _files(tmp_path / "local")
    assert result.done == len(expected) + extra
    assert result.nodes == 2  # each actor needs the one CPU a node has: one actor per node wrote masks
