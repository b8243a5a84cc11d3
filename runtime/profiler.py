"""Throughput and latency of models on real pre-processed images, as ``isnet profile`` reports them.

For each model and batch size, ``instances`` sessions (each with ``threads`` intra-op threads)
run concurrently on the same cores after a warm-up, for a number of iterations or a duration.
Two figures can be measured:

- **inference**: the runner call alone, on batches pre-processed beforehand;
- **end-to-end** (``with_preprocess``): decode the file, pre-process, infer, restore to the
  original size and encode the 8-bit PNG in memory, one image after another as an application
  would, per instance.

Throughput is images finished by all instances divided by the wall time of the measured
window; latency is per call (one batch), in milliseconds.
"""

from __future__ import annotations

import os
import platform
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

import cv2
import numpy as np

from isnet.build_in.artifact import is_artifact, read_build_info
from isnet.build_in.imageio import list_images
from isnet.build_in.ops import mask_from_output
from isnet.core import IsnetError
from isnet.runtime.models import LoadedModel, ModelKind, load_model, model_kind
from isnet.runtime.synthetic import write_synthetic_photos

SYNTHETIC_IMAGES = 8
MAX_IMAGES = 32
_LIBRARIES = ("numpy", "onnxruntime", "opencv-python-headless", "torch", "openvino")


@dataclass(frozen=True)
class LatencyStats:
    """Per-call latency percentiles in milliseconds."""

    p50: float
    p90: float
    p99: float
    max: float
    mean: float

    @classmethod
    def from_seconds(cls, seconds: Sequence[float]) -> "LatencyStats":
        """Percentiles (linear interpolation) of per-call times given in seconds."""
        ms = np.asarray(seconds, dtype=np.float64) * 1000.0
        p50, p90, p99 = np.percentile(ms, [50, 90, 99])
        return cls(float(p50), float(p90), float(p99), float(ms.max()), float(ms.mean()))


@dataclass(frozen=True)
class Measurement:
    """One measured window: images per second, per-call latency, calls and images finished."""

    throughput_ips: float
    latency_ms: LatencyStats
    calls: int
    images: int
    seconds: float


@dataclass(frozen=True)
class ProfileRecord:
    """The figures for one (model, batch): inference only, and end-to-end when requested."""

    model: str
    path: str
    kind: str
    backend: str
    precision: str
    batch: int
    instances: int
    threads: int | None
    input_size: tuple[int, int] | None
    inference: Measurement
    end_to_end: Measurement | None

    @property
    def throughput_ips(self) -> float:
        """Inference-only images per second."""
        return self.inference.throughput_ips

    @property
    def latency_ms(self) -> LatencyStats:
        """Inference-only latency per call."""
        return self.inference.latency_ms

    def to_json(self, host: dict | None = None) -> dict:
        """A JSON record: identity, ``throughput_ips``, ``latency_ms`` (inference) and ``end_to_end``."""
        inference = asdict(self.inference)
        record = {
            "model": self.model, "path": self.path, "kind": self.kind, "backend": self.backend,
            "precision": self.precision, "batch": self.batch, "instances": self.instances,
            "threads": self.threads, "input_size": list(self.input_size) if self.input_size else None,
            "mode": "inference",
            "throughput_ips": inference.pop("throughput_ips"), "latency_ms": inference.pop("latency_ms"),
            **inference,
            "end_to_end": asdict(self.end_to_end) if self.end_to_end else None,
        }
        if host is not None:
            record["host"] = host
        return record


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# /proc/cpuinfo flags that decide which precision runs fastest, by what they mean for a build.
CPU_FEATURES = {"amx_bf16": "AMX-BF16", "amx_int8": "AMX-INT8", "avx512_bf16": "AVX-512 BF16",
                "avx512_vnni": "AVX-512 VNNI", "avx512f": "AVX-512", "avx_vnni": "AVX-VNNI", "avx2": "AVX2"}


def cpu_features() -> list[str]:
    """The matrix and vector units of this CPU that int8 and bf16 builds use (names of :data:`CPU_FEATURES`,
    in that order); empty where ``/proc/cpuinfo`` is not readable."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            flags = next((set(line.split(":", 1)[1].split()) for line in handle if line.startswith("flags")), set())
    except OSError:
        return []
    return [name for flag, name in CPU_FEATURES.items() if flag in flags]


def host_info() -> dict:
    """Host name, OS, CPU model and core counts, Python and the versions of the libraries that run models."""
    import psutil

    versions = {"python": platform.python_version()}
    for name in _LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_features": cpu_features(),
        "logical_cores": psutil.cpu_count(logical=True),
        "physical_cores": psutil.cpu_count(logical=False),
        "versions": versions,
    }


def _measure(call: Callable[[int], int], instances: int, warmup: int, iterations: int | None,
             duration: float | None, progress: Callable[[float], None] | None = None) -> Measurement:
    """Run ``call(instance) -> images`` in ``instances`` threads after ``warmup`` calls each.

    ``progress(fraction)`` is called from the caller's thread about four times a second.
    """
    window: dict[str, float] = {}
    # The barrier's action runs once, before any instance is released: the window starts then.
    barrier = threading.Barrier(instances + 1, action=lambda: window.__setitem__("start", time.perf_counter()))
    latencies: list[list[float]] = [[] for _ in range(instances)]
    images = [0] * instances
    done_calls = [0] * instances

    def worker(instance: int) -> None:
        try:
            for _ in range(warmup):
                call(instance)
            barrier.wait()
            calls = 0
            while (calls < iterations) if iterations is not None else \
                    (time.perf_counter() - window["start"] < duration):
                start = time.perf_counter()
                images[instance] += call(instance)
                latencies[instance].append(time.perf_counter() - start)
                calls += 1
                done_calls[instance] = calls
        except BaseException:
            # Release the others from the barrier; the error reaches the caller via the future.
            barrier.abort()
            raise

    with ThreadPoolExecutor(max_workers=instances, thread_name_prefix="isnet-profile") as pool:
        futures = [pool.submit(worker, i) for i in range(instances)]
        try:
            barrier.wait()
        except threading.BrokenBarrierError:
            pass  # an instance failed; its future re-raises the error below
        if progress is not None and "start" in window:
            while wait(futures, timeout=0.25).not_done:
                if iterations is not None:
                    progress(min(1.0, sum(done_calls) / (iterations * instances)))
                else:
                    progress(min(1.0, (time.perf_counter() - window["start"]) / duration))
        errors = [error for error in (future.exception() for future in futures) if error is not None]
        if errors:
            # Raise the instance's own error, not the broken barrier it left the others with.
            raise next((e for e in errors if not isinstance(e, threading.BrokenBarrierError)), errors[0])
        seconds = time.perf_counter() - window["start"]
    flat = [value for per_instance in latencies for value in per_instance]
    total = sum(images)
    return Measurement(total / seconds if seconds > 0 else 0.0, LatencyStats.from_seconds(flat),
                       len(flat), total, seconds)


def _images(image_dir: str | os.PathLike | None, scratch: Path) -> list[Path]:
    if image_dir is None:
        return write_synthetic_photos(scratch, SYNTHETIC_IMAGES)
    images = list_images(image_dir)[:MAX_IMAGES]
    if not images:
        raise IsnetError(f"no images under {image_dir}")
    return images


def _instance_threads(instances: int, threads: int | None) -> int | None:
    if threads is not None or instances == 1:
        return threads
    # N sessions each taking every core would oversubscribe the CPU; split the cores instead.
    return max(1, (os.cpu_count() or 1) // instances)


@dataclass
class _Instance:
    model: LoadedModel
    threads_used: int | None


def _open_instances(path, instances: int, threads: int | None, size, hint: str | None, preprocess=None):
    """The sessions to measure and a factory of one infer callable per instance for a batch size.

    ONNX Runtime and torch models get one session per instance, the cores split between them.
    An OpenVINO artifact gets one compiled model with ``instances`` streams and one infer request
    per instance, which is how OpenVINO shares a CPU between concurrent requests.
    """
    probe_options = {"performance_hint": hint} if hint else None
    if is_artifact(path) and read_build_info(path)["backend"] == "openvino":
        options = {}
        if instances > 1:
            options = {"streams": instances, "performance_hint": "THROUGHPUT"}
        if hint:
            options["performance_hint"] = hint.upper()
        model = load_model(path, threads=threads, size=size, runner_options=options, preprocess=preprocess)

        def calls(batch: int):
            requests = model.runner.infer_requests(instances, batch)
            return [lambda stack, r=r: r.infer({0: stack})[0] for r in requests]

        return [_Instance(model, threads)], calls
    if probe_options:
        raise IsnetError(f"{path}: a performance hint applies to OpenVINO artifacts only")
    threads = _instance_threads(instances, threads)
    models = [load_model(path, threads=threads, size=size, preprocess=preprocess) for _ in range(instances)]
    return [_Instance(m, threads) for m in models], lambda batch: [m.predict for m in models]


def profile_model(path: str | os.PathLike, batches: Sequence[int] = (1,), instances: int = 1,
                  threads: int | None = None, warmup: int = 3, iterations: int | None = 20,
                  duration: float | None = None, with_preprocess: bool = False,
                  image_dir: str | os.PathLike | None = None,
                  size: tuple[int, int] | None = None, hint: str | None = None,
                  preprocess=None, progress: Callable[[float], None] | None = None) -> list[ProfileRecord]:
    """Profile one model at every batch size; returns one :class:`ProfileRecord` per batch.

    Images come from ``image_dir`` (its first 32) or, when None, from deterministic synthetic
    photos. Give either ``iterations`` (calls per instance) or ``duration`` (seconds).
    ``hint`` (``LATENCY`` / ``THROUGHPUT``) is the OpenVINO performance hint; by default an
    OpenVINO artifact uses its recorded hint with one instance and THROUGHPUT with several.
    """
    if (iterations is None) == (duration is None):
        raise IsnetError("give either a number of iterations or a duration")
    if iterations is not None and iterations < 1 or duration is not None and duration <= 0:
        raise IsnetError("iterations and duration must be positive")
    if instances < 1 or warmup < 0 or not batches or any(b < 1 for b in batches):
        raise IsnetError("instances and batch sizes must be positive, warm-up calls non-negative")
    models, calls = _open_instances(path, instances, threads, size, hint, preprocess)
    threads = models[0].threads_used
    first = models[0].model
    with tempfile.TemporaryDirectory(prefix="isnet-profile-") as scratch:
        images = _images(image_dir, Path(scratch))
        prepared = [first.preprocessor.load(image) for image in images]
        if len({tensor.shape for tensor, _ in prepared}) != 1:
            raise IsnetError(f"{path}: the pre-processing has no fixed Resize, so images of different sizes "
                             "cannot be batched; profile with images of one size (--image-dir)")
        records = []
        for batch in batches:
            # Each instance cycles through its own ready-made batches of real pre-processed images.
            stacks = [np.stack([prepared[(start + i) % len(prepared)][0] for i in range(batch)])
                      for start in range(0, max(len(prepared), batch), batch)]
            cursor = [0] * instances

            infer_calls = calls(batch)

            def infer(instance: int) -> int:
                stack = stacks[cursor[instance] % len(stacks)]
                cursor[instance] += 1
                infer_calls[instance](stack)
                return batch

            inference = _measure(infer, instances, warmup, iterations, duration, progress)
            end_to_end = None
            if with_preprocess:
                def run_end_to_end(instance: int) -> int:
                    model: LoadedModel = first
                    start = cursor[instance]
                    cursor[instance] += batch
                    files = [images[(start + i) % len(images)] for i in range(batch)]
                    loaded = [model.preprocessor.load(file) for file in files]
                    outputs = infer_calls[instance](np.stack([tensor for tensor, _ in loaded]))
                    for (_, geometry), output in zip(loaded, outputs):
                        mask = mask_from_output(output[0], geometry)
                        cv2.imencode(".png", mask)
                    return batch

                end_to_end = _measure(run_end_to_end, instances, warmup, iterations, duration)
            records.append(ProfileRecord(first.name, str(first.path), first.kind.value, first.backend,
                                         first.precision, batch, instances, threads, first.input_size,
                                         inference, end_to_end))
    return records


def format_table(records: Sequence[ProfileRecord], host: dict) -> str:
    """The records as one text table (models side by side per batch), headed by the host line."""
    versions = ", ".join(f"{k} {v}" for k, v in host["versions"].items())
    lines = [f"host: {host['hostname']} | {host['cpu']} | {host['physical_cores']} cores / "
             f"{host['logical_cores']} threads | {host['platform']}",
             f"versions: {versions}"]
    with_e2e = any(r.end_to_end for r in records)
    header = ["model", "precision", "batch", "inst", "threads", "infer img/s", "p50 ms", "p90 ms", "p99 ms", "max ms"]
    if with_e2e:
        header += ["e2e img/s", "e2e p50", "e2e p90", "e2e p99", "e2e max"]
    rows = []
    for record in sorted(records, key=lambda r: r.batch):
        row = [record.model, record.precision, str(record.batch), str(record.instances),
               str(record.threads) if record.threads else "auto"]
        for measurement in (record.inference, record.end_to_end) if with_e2e else (record.inference,):
            if measurement is None:
                row += ["-"] * 5
                continue
            stats = measurement.latency_ms
            row += [f"{measurement.throughput_ips:.2f}", f"{stats.p50:.1f}", f"{stats.p90:.1f}",
                    f"{stats.p99:.1f}", f"{stats.max:.1f}"]
        rows.append(row)
    widths = [max(len(header[i]), *(len(row[i]) for row in rows)) for i in range(len(header))]
    lines.append("infer = runner call only, on pre-processed batches"
                 + ("; e2e = decode + pre-process + infer + restore + PNG encode" if with_e2e else "")
                 + "; latency per call (one batch)")
    lines.append("  ".join(h.ljust(w) if i < 2 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths))))
    for row in rows:
        lines.append("  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
    return "\n".join(lines)


def profile_models(paths: Sequence[str | os.PathLike], size: tuple[int, int] | None = None,
                   preprocess=None, **options) -> list[ProfileRecord]:
    """:func:`profile_model` for each path, records in model order then batch order.

    ``size`` and ``preprocess`` apply to the models without ``build.json`` (artifacts carry their
    own), so an artifact can be compared with its source ONNX; they are refused when every model
    is an artifact.
    """
    kinds = [model_kind(path) for path in paths]
    if (size is not None or preprocess is not None) and all(kind is ModelKind.ARTIFACT for kind in kinds):
        raise IsnetError("an input size and pre-processing are for models without build.json; artifacts carry "
                         "their own pre-processing (drop them)")
    hint = options.pop("hint", None)
    openvino = [kind is ModelKind.ARTIFACT and read_build_info(path)["backend"] == "openvino"
                for path, kind in zip(paths, kinds)]
    if hint and not any(openvino):
        raise IsnetError("a performance hint is OpenVINO's; none of the models is an OpenVINO artifact")
    records = []
    for path, kind, is_openvino in zip(paths, kinds, openvino):
        bare = kind is not ModelKind.ARTIFACT
        records.extend(profile_model(path, size=size if bare else None, preprocess=preprocess if bare else None,
                                     hint=hint if is_openvino else None, **options))
    return records

