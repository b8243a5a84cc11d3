"""``isnet run --engine ray``: the same job as :func:`isnet.runtime.run_folder`, on a Ray cluster.

The driver plans the folder exactly as the local engine does (:func:`~isnet.runtime.stream.plan_folder`:
same names, same ``--resume`` rule, same refusals), then streams the image list through Ray Data:
``map_batches`` with a pool of actors (``compute=ActorPoolStrategy``), each holding the model once
and running the local engine's own stages (:func:`~isnet.runtime.stream.process_items`: decode and
pre-process with the artifact's ``build.json`` ops, infer, restore, write atomically) on its share.
The driver only counts what comes back and writes ``failures.txt``.

Images, the model and the output folder must be reachable by the same paths from every node (a
local folder on one machine, a shared file system on a cluster). A worker that dies is restarted by
Ray and its batch runs again; masks are written under a temporary name and renamed, so a killed
write leaves no half mask, and the temporary files it leaves are removed at the end of the run.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

from isnet.core import IsnetError, atomic_temp_target
from isnet.runtime.stream import Item, StreamResult, finish_run, plan_folder, process_items

# Images per map_batches call: the unit Ray schedules, retries after a failure and reports back.
IMAGES_PER_TASK = 64
THREADS_PER_ACTOR = 2
# Retries of a batch whose worker died, before the run stops with an error.
WORKER_RETRIES = 3
# How long the address of a cluster to join may take to accept a connection.
REACH_TIMEOUT_SECONDS = 5


def _import_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise IsnetError("the Ray engine needs the ray extra: pip install 'isnet[ray]'") from None
    return ray


class MaskWriter:
    """A Ray Data actor: loads the model once, then writes the masks of each batch of image paths."""

    def __init__(self, model: str, threads: int, io_threads: int, load_options: dict, image_dir: str,
                 output_dir: str, batch: int, min_max: bool):
        from isnet.runtime.models import load_model

        # A refusal raised here reaches the driver only as text; it goes back as the "refusal" column
        # of every batch instead, which the driver raises as the IsnetError it is.
        self.model, self.refusal = None, None
        try:
            self.model = load_model(model, threads=threads, **load_options)
        except IsnetError as exc:
            self.refusal = exc
        self.image_dir, self.output_dir = Path(image_dir), Path(output_dir)
        self.io_threads, self.batch, self.min_max = io_threads, batch, min_max

    def __call__(self, rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import ray

        node = ray.get_runtime_context().get_node_id()
        if self.refusal is not None:
            count = len(rows["relative"])
            return {"relative": rows["relative"], "error": np.array([""] * count, dtype=object),
                    "node": np.array([node] * count, dtype=object), "model": np.array([""] * count, dtype=object),
                    "sigmoid": np.zeros(count, dtype=bool),
                    "refusal": np.array([str(self.refusal)] * count, dtype=object)}
        items = [Item(str(relative), str(mask)) for relative, mask in zip(rows["relative"], rows["mask"])]
        finished = list(process_items(self.model, self.image_dir, self.output_dir, items, self.batch,
                                      self.min_max, io_threads=self.io_threads))
        count = len(finished)
        return {"relative": np.array([item.relative for item in finished], dtype=object),
                "error": np.array([item.error or "" for item in finished], dtype=object),
                "node": np.array([node] * count, dtype=object),
                # What the command says of the model, as the local engine does after loading it.
                "model": np.array([self.model.name] * count, dtype=object),
                "sigmoid": np.array([self.model.apply_sigmoid] * count, dtype=bool),
                "refusal": np.array([""] * count, dtype=object)}


def _check_address(address: str | None) -> None:
    """A one-line error, within seconds, when ``address`` (else ``RAY_ADDRESS``) names a host and port
    that accept no connection (``ray.init`` itself would retry for minutes), or a Ray Client address."""
    address = address or os.environ.get("RAY_ADDRESS")
    if not address or address in ("auto", "local"):
        return
    scheme, _, where = address.rpartition("://")
    if scheme == "ray":
        # Ray Data's streaming executor needs a driver of its own in the cluster (seen with Ray 2.60:
        # "'Worker' object has no attribute 'core_worker'" over Ray Client).
        raise IsnetError(f"{address}: Ray Client (ray://) cannot run Ray Data jobs; run isnet on a node of "
                         "the cluster (--address HOST:6379, or auto) or submit it with `ray job submit`")
    if scheme:
        return  # another kind of address (a job server's http://, say): Ray's to judge
    host, _, port = where.rstrip("/").rpartition(":")
    if not host or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=REACH_TIMEOUT_SECONDS).close()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise IsnetError(f"cannot reach the Ray cluster at {address}: {reason} "
                         f"(is it running, and is {host}:{port} its address?)") from None


def _connect(ray, address: str | None) -> bool:
    """Join ``address``, else ``RAY_ADDRESS``, else a cluster ``ray start`` runs on this machine, else
    start a local instance (``ray.init``'s own order); True when this call connected."""
    if ray.is_initialized():
        return False
    options = {"include_dashboard": False, "logging_level": logging.ERROR, "log_to_driver": False}
    try:
        if address:
            ray.init(address=address, **options)
        else:
            ray.init(**options)  # RAY_ADDRESS, a `ray start` cluster here, else a new local instance
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = address or os.environ.get("RAY_ADDRESS") or "a local instance"
        raise IsnetError(f"cannot start or join Ray at {where}: {str(exc).splitlines()[0]}") from None
    # Ray's progress and plan notes, and Ray Data's traceback of a failed task: the command reports
    # for itself, the failure as one line (Ray's own logs keep the details).
    logging.getLogger("ray").setLevel(logging.ERROR)
    logging.getLogger("ray.data").setLevel(logging.CRITICAL)
    return True


def _sweep_temporary_masks(output_dir: Path, items: list[Item]) -> int:
    """Remove the temporary files killed writers left for this run's masks (``.<stem>.<hex>.tmp.png``
    beside a planned mask; nothing else is touched); return how many."""
    masks: dict[Path, set[str]] = {}
    for item in items:
        mask = output_dir / item.mask
        masks.setdefault(mask.parent, set()).add(mask.name)
    removed = 0
    for folder, wanted in masks.items():
        if not folder.is_dir():
            continue
        for entry in os.scandir(folder):
            if atomic_temp_target(entry.name) in wanted:
                Path(entry.path).unlink(missing_ok=True)
                removed += 1
    return removed


def _one_line(exc: BaseException, ray) -> IsnetError | None:
    """A worker's failure as the one-line error the command prints: an IsnetError raised in an actor
    (a model its node cannot open, say) keeps its message; a worker that kept dying is said so.
    Anything else is not the user's to fix and goes up as it is (None)."""
    chain, seen = [], exc
    while seen is not None:
        chain.append(seen)
        seen = getattr(seen, "cause", None) or seen.__cause__
    for error in chain:
        if isinstance(error, IsnetError):
            return IsnetError(f"a Ray worker failed: {error}")
    died = next((error for error in chain if isinstance(error, ray.exceptions.RayActorError)), None)
    if died is not None:
        where = ("while loading the model" if getattr(died, "actor_init_failed", False)
                 else f"{WORKER_RETRIES + 1} times on the same images")
        return IsnetError(f"a Ray worker process died {where} (a crash in native code, or out of memory: "
                          "the workers' logs are in Ray's session folder); the masks written so far are "
                          "complete, --resume keeps them")
    return None


def run_folder_on_ray(model: str | os.PathLike, image_dir: str | os.PathLike, output_dir: str | os.PathLike,
                      batch: int = 1, resume: bool = False, suffixes: str | None = None, min_max: bool = False,
                      address: str | None = None, actors: int | None = None, threads_per_actor: int | None = None,
                      io_threads: int | None = None, load_options: dict | None = None,
                      progress: Callable[[int, int], None] | None = None,
                      on_model: Callable[[str, bool], None] | None = None) -> StreamResult:
    """:func:`isnet.runtime.run_folder`'s job with ``actors`` Ray actors of ``threads_per_actor`` inference
    threads each (default: as many as the cluster's CPUs allow, at least one) and ``io_threads``
    decode/save threads each (default: one per inference thread, at most 4). Same outputs, same
    ``failures.txt``, same ``progress(n, total)`` calls; ``load_options`` go to ``load_model``
    (``size``, ``preprocess``). ``on_model(name, sigmoid_applied)`` is called once, when the first
    masks come back from an actor that loaded the model."""
    threads_per_actor = threads_per_actor or THREADS_PER_ACTOR
    io_threads = io_threads or min(4, threads_per_actor)
    if batch < 1 or threads_per_actor < 1 or io_threads < 1 or (actors is not None and actors < 1):
        raise IsnetError("batch, actors, threads_per_actor and io_threads must be at least 1")
    ray = _import_ray()
    from isnet.runtime.models import model_kind

    given_output = Path(output_dir)
    model, image_dir, output_dir = Path(model).resolve(), Path(image_dir).resolve(), given_output.resolve()
    model_kind(model)  # a missing model is a one-line error before Ray starts
    total, plan = plan_folder(image_dir, output_dir, suffixes, resume)
    to_process = len(plan.todo) + len(plan.failures)
    failures = list(plan.failures)
    if plan.todo:  # with nothing to do (all resumed), no cluster is needed
        _check_address(address)
    started_here = _connect(ray, address) if plan.todo else False
    if progress is not None:
        progress(len(failures), to_process)
    done, nodes, model_told = 0, set(), False
    start = time.perf_counter()
    try:
        if plan.todo:
            context = ray.data.DataContext.get_current()
            context.enable_progress_bars = False  # the command draws its own
            cpus = int(ray.cluster_resources().get("CPU", 1))
            pool = actors or max(1, cpus // threads_per_actor)
            # One block per task (batch_size=None: Ray Data would otherwise bundle blocks smaller than
            # batch_size into one task): at most IMAGES_PER_TASK images, and few enough that a small
            # folder still gives every actor a share and the bar several steps.
            per_task = max(1, min(IMAGES_PER_TASK, -(-len(plan.todo) // (4 * pool))))
            blocks = -(-len(plan.todo) // per_task)
            dataset = ray.data.from_items([{"relative": item.relative, "mask": item.mask} for item in plan.todo],
                                          override_num_blocks=blocks)
            with warnings.catch_warnings():
                # Ray Data would restart a dead actor and retry its batch forever: a batch that kills
                # its worker every time (an image that crashes a native decoder) would hang the run.
                # Actors are still restarted without limit (a long run may lose several nodes), but a
                # batch is retried WORKER_RETRIES times. Ray 2.60 takes max_task_retries only through
                # **ray_remote_args, which it calls deprecated (gone in 2.64: hence ray<2.64).
                warnings.simplefilter("ignore", DeprecationWarning)
                written = dataset.map_batches(
                    MaskWriter, batch_size=None, batch_format="numpy",
                    # One batch at a time per actor: a batch queued behind a busy one would wait while another idles.
                    compute=ray.data.ActorPoolStrategy(size=pool, max_tasks_in_flight_per_actor=1),
                    num_cpus=min(threads_per_actor, cpus),
                    max_restarts=-1, max_task_retries=WORKER_RETRIES,
                    fn_constructor_kwargs={"model": str(model), "threads": threads_per_actor,
                                           "io_threads": io_threads, "load_options": load_options or {},
                                           "image_dir": str(image_dir), "output_dir": str(output_dir),
                                           "batch": batch, "min_max": min_max})
            try:
                for rows in written.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=0):
                    refusal = next((str(text) for text in rows["refusal"] if text), None)
                    if refusal is not None:
                        raise IsnetError(f"a Ray worker failed: {refusal}")
                    if on_model is not None and not model_told and len(rows["model"]):
                        on_model(str(rows["model"][0]), bool(rows["sigmoid"][0]))
                        model_told = True
                    nodes.update(rows["node"])
                    for relative, error in zip(rows["relative"], rows["error"]):
                        if error:
                            failures.append((str(relative), str(error)))
                        else:
                            done += 1
                    if progress is not None:
                        progress(len(rows["relative"]), to_process)
            except ray.exceptions.RayError as exc:
                refusal = _one_line(exc, ray)
                if refusal is None:
                    raise
                raise refusal from None
    finally:
        if started_here:
            ray.shutdown()
        _sweep_temporary_masks(output_dir, plan.todo)
    return finish_run(given_output, total, done, plan.skipped, failures, time.perf_counter() - start,
                      nodes=len(nodes))
