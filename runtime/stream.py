"""The stream runner behind ``isnet run``: an image folder in, one 8-bit PNG mask per image out.

Decoding and pre-processing run on worker threads ahead of inference, restoring and saving on
worker threads behind it (:mod:`isnet.runtime.pipeline`), so the model is rarely idle. Queues are
bounded, so memory does not grow with the folder. Images are processed in sorted relative-path
order and every mask's name follows from its image's, so the outputs do not depend on timing.

A corrupt or truncated image is recorded in ``failures.txt`` (``relative/path<TAB>reason``) in
the save folder and skipped; any other error stops the run and reaches the caller.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections import deque
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from isnet.build_in.imageio import ImageDecodeError, encode_png, list_images, parse_suffixes
from isnet.build_in.ops import Geometry, mask_from_output
from isnet.core import IsnetError, atomic_path, write_text_atomic
from isnet.runtime.models import LoadedModel
from isnet.runtime.pipeline import OrderedSink, default_io_threads, ordered_map, predict_batches

FAILURES_FILE = "failures.txt"
MASK_SUFFIX = ".png"


@dataclass(frozen=True)
class StreamResult:
    """What a run did: counts, the images that failed (relative path, reason) and the wall time."""

    output_dir: Path
    total: int
    done: int
    skipped: int
    failures: tuple[tuple[str, str], ...]
    seconds: float
    failures_path: Path | None = None
    nodes: int = 1  # machines that wrote masks (the Ray engine spreads over a cluster)

    @property
    def failed(self) -> int:
        """Images that could not be decoded or whose mask name was taken."""
        return len(self.failures)

    @property
    def images_per_second(self) -> float:
        """Masks written per second of pipeline time (model loading excluded)."""
        return self.done / self.seconds if self.seconds > 0 else 0.0


@dataclass(slots=True)
class Item:
    """One image to mask: its path relative to the image folder and its mask's, relative to the output."""

    # Paths are kept relative (short strings) so that planning a 100k-image folder stays small.
    relative: str
    mask: str
    tensor: np.ndarray | None = None
    geometry: Geometry | None = None
    error: str | None = None


@dataclass
class Plan:
    """What a run has to do: the images to mask, how many are done already, names that cannot be written."""

    todo: list[Item] = field(default_factory=list)
    skipped: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)


def mask_is_complete(path: Path) -> bool:
    """True when ``path`` is a PNG that ends with its IEND chunk (what ``--resume`` trusts)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(8)
            handle.seek(0, os.SEEK_END)
            if handle.tell() < 20:
                return False
            handle.seek(-12, os.SEEK_END)
            tail = handle.read(12)
    except OSError:
        return False
    return head == b"\x89PNG\r\n\x1a\n" and tail[4:8] == b"IEND"


def _plan(image_dir: Path, output_dir: Path, suffixes, resume: bool) -> tuple[int, Plan]:
    images = list_images(image_dir, suffixes)
    if output_dir.resolve().is_relative_to(image_dir.resolve()):
        # Masks saved inside the image folder must not become inputs of the next (resumed) run.
        inside = output_dir.resolve()
        images = [image for image in images if not image.resolve().is_relative_to(inside)]
    if not images:
        raise IsnetError(f"no images with suffix {', '.join(suffixes)} under {image_dir}")
    plan = Plan()
    owners: dict[str, str] = {}
    for image in images:
        relative = image.relative_to(image_dir).as_posix()
        mask = Path(relative).with_suffix(MASK_SUFFIX).as_posix()
        if mask in owners:
            # `a.jpg` and `a.png` would write the same mask; the first in sorted order keeps it.
            plan.failures.append((relative, f"mask name {mask} is already taken by {owners[mask]}; "
                                            "rename one of them"))
            continue
        owners[mask] = relative
        if resume and mask_is_complete(output_dir / mask):
            plan.skipped += 1
            continue
        plan.todo.append(Item(relative, mask))
    return len(images), plan


def run_folder(model: LoadedModel, image_dir: str | os.PathLike, output_dir: str | os.PathLike,
               batch: int = 1, resume: bool = False, suffixes: str | None = None, min_max: bool = False,
               io_threads: int | None = None, progress: Callable[[int, int], None] | None = None,
               maps_dir: str | os.PathLike | None = None, maps_for: Collection[str] = ()) -> StreamResult:
    """Write a mask for every image under ``image_dir`` (sub-folders mirrored) into ``output_dir``.

    Masks are 8-bit PNGs at the original image size (the model output upsampled bilinearly),
    written atomically. ``resume`` skips images whose mask is already complete. ``min_max``
    stretches each map to [0, 255] as the official script does. ``progress(n, total)`` is called
    in the caller's thread each time ``n`` more of the ``total`` images to process are finished
    (saved, or failed); resumed images are not part of ``total``. For the images in ``maps_for``
    (paths relative to ``image_dir``) the raw output map is also kept, float32 at the model's
    resolution, as ``<maps_dir>/<relative>.npy`` (what ``isnet compare`` measures drift on).
    Returns the counts; an unexpected error in any stage is raised.
    """
    if batch < 1:
        raise IsnetError(f"batch must be at least 1, got {batch}")
    image_dir, output_dir = Path(image_dir), Path(output_dir)
    total, plan = plan_folder(image_dir, output_dir, suffixes, resume)
    to_process = len(plan.todo) + len(plan.failures)
    failures = list(plan.failures)
    if progress is not None:
        progress(len(failures), to_process)
    done = 0
    start = time.perf_counter()
    with contextlib.closing(process_items(model, image_dir, output_dir, plan.todo, batch, min_max, io_threads,
                                          maps_dir, maps_for)) as finished:
        for item in finished:
            if item.error is None:
                done += 1
            else:
                failures.append((item.relative, item.error))
            if progress is not None:
                progress(1, to_process)
    return finish_run(output_dir, total, done, plan.skipped, failures, time.perf_counter() - start)


def plan_folder(image_dir: Path, output_dir: Path, suffixes: str | None, resume: bool) -> tuple[int, Plan]:
    """Which images of ``image_dir`` need a mask in ``output_dir`` (checks the folders, creates the output
    folder): (number of images, the plan). Shared by every engine, so that names never depend on it."""
    suffix_list = parse_suffixes(suffixes)
    if output_dir.resolve() == image_dir.resolve():
        raise IsnetError(f"the output folder must differ from the image folder ({image_dir}); masks would mix with images")
    if output_dir.exists() and not output_dir.is_dir():
        raise IsnetError(f"the output folder {output_dir} is a file; name a folder")
    total, plan = _plan(image_dir, output_dir, suffix_list, resume)
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise IsnetError(f"cannot create the output folder {output_dir}: {exc.strerror or exc}") from None
    return total, plan


def process_items(model: LoadedModel, image_dir: Path, output_dir: Path, items: Iterable[Item], batch: int = 1,
                  min_max: bool = False, io_threads: int | None = None, maps_dir: str | os.PathLike | None = None,
                  maps_for: Collection[str] = ()) -> Iterator[Item]:
    """Decode, infer and save ``items`` in the three concurrent stages; yield each one as it finishes:
    its mask written (``error`` None), or its image not decodable (``error`` says why)."""
    preprocessor = model.preprocessor
    io_threads = io_threads or default_io_threads()
    keep_maps = set(maps_for) if maps_dir is not None else set()
    finished: deque[Item] = deque()

    def load(item: Item) -> Item:
        image = image_dir / item.relative
        try:
            item.tensor, item.geometry = preprocessor.load(image)
        except ImageDecodeError as exc:
            item.error = str(exc).removeprefix(f"{image}: ")
        return item

    def save(item: Item, output_map: np.ndarray) -> Item:
        mask = mask_from_output(output_map, item.geometry, min_max=min_max)
        with atomic_path(output_dir / item.mask) as tmp:
            encode_png(tmp, mask)
        if item.relative in keep_maps:
            with atomic_path(Path(maps_dir) / f"{item.relative}.npy") as tmp:
                np.save(tmp, np.ascontiguousarray(output_map, dtype=np.float32))
        return item

    depth = 2 * batch + io_threads
    with OrderedSink(io_threads, depth, on_done=finished.append) as sink, \
            contextlib.closing(ordered_map(load, items, io_threads, depth)) as loaded:
        def decoded() -> Iterator[Item]:
            for item in loaded:
                if item.error is None:
                    yield item
                else:
                    finished.append(item)

        for item, output in predict_batches(model, decoded(), batch, lambda item: item.tensor):
            item.tensor = None  # free the input while the mask waits to be saved
            sink.submit(save, item, output[0])
            while finished:
                yield finished.popleft()
        sink.drain()
    while finished:
        yield finished.popleft()


def finish_run(output_dir: Path, total: int, done: int, skipped: int, failures: list[tuple[str, str]],
               seconds: float, nodes: int = 1) -> StreamResult:
    """Write ``failures.txt`` (sorted) or remove a stale one; the run's result."""
    failures_path = output_dir / FAILURES_FILE
    if failures:
        failures.sort()
        write_text_atomic(failures_path, "".join(f"{relative}\t{reason}\n" for relative, reason in failures))
    else:
        # A failures.txt from an earlier run would describe images that now have masks.
        failures_path.unlink(missing_ok=True)
    return StreamResult(output_dir, total, done, skipped, tuple(failures), seconds,
                        failures_path if failures else None, nodes)
