"""The npz path for bit-level checks: images -> input npz -> model -> output npz -> PNG masks, and a comparison.

File layout, as the reference device's tools use it:

- input npz: key ``input_0``, uint8 ``3 x H x W`` RGB (the decoded image, resized only on request);
- a datalist: one absolute input-npz path per line;
- output npz: key ``output_0``, float32 ``1 x 1 x H x W`` (the model's saliency map), plus
  ``content_box`` (int64 top, left, height, width of the image inside the model input), which
  :func:`png_from_npz` uses to crop keep-ratio padding before resizing.

Files are matched **by name**: each datalist entry is named by its path relative to the common
folder of all entries (``sub/0001``), and every later file reuses that name
(npz-run's ``<output-dir>/sub/0001.npz``, npz2png's ``<output-dir>/sub/0001.png`` and its source
``<image-dir>/sub/0001.<ext>``).
"""

from __future__ import annotations

import contextlib
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from isnet.build_in.difference import DifferenceAccumulator, OutputDifference
from isnet.build_in.imageio import IMAGE_SUFFIXES, decode_image, encode_png, list_images
from isnet.build_in.ops import Geometry, Resize, mask_from_output
from isnet.core import IsnetError, atomic_path, write_text_atomic
from isnet.runtime.models import LoadedModel
from isnet.runtime.pipeline import OrderedSink, default_io_threads, ordered_map, predict_batches

INPUT_KEY = "input_0"
OUTPUT_KEY = "output_0"
BOX_KEY = "content_box"


def read_npz_array(path: str | os.PathLike, key: str, dtype: np.dtype | None = None,
                   ndim: int | None = None) -> np.ndarray:
    """Read ``key`` from an npz file, checking dtype and rank; errors name the file and say what is valid."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            if key not in data.files:
                raise IsnetError(f"{path}: no key '{key}' (keys: {', '.join(data.files) or 'none'})")
            array = data[key]
    except FileNotFoundError:
        raise IsnetError(f"{path}: npz file not found") from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise IsnetError(f"{path}: not a readable npz file ({exc})") from None
    if dtype is not None and array.dtype != dtype:
        raise IsnetError(f"{path}: '{key}' is {array.dtype}, expected {np.dtype(dtype)}")
    if ndim is not None and array.ndim != ndim:
        raise IsnetError(f"{path}: '{key}' has shape {list(array.shape)}, expected {ndim} dimensions")
    return array


def write_npz(path: str | os.PathLike, **arrays: np.ndarray) -> Path:
    """Write an uncompressed npz atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **arrays)
    return Path(path)


def read_datalist(path: str | os.PathLike) -> list[Path]:
    """The npz paths listed in a datalist file (blank lines ignored; relative lines resolve beside it)."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise IsnetError(f"datalist not found: {path}") from None
    entries = [Path(line.strip()) for line in lines if line.strip()]
    if not entries:
        raise IsnetError(f"{path}: the datalist is empty")
    return [entry if entry.is_absolute() else path.parent / entry for entry in entries]


def datalist_names(entries: list[Path]) -> list[str]:
    """Each entry's name: its path relative to the entries' common folder, without suffix (posix)."""
    parents = [os.path.abspath(entry.parent) for entry in entries]
    root = Path(os.path.commonpath(parents))
    names = [PurePosixPath(Path(os.path.abspath(entry)).relative_to(root).as_posix()) for entry in entries]
    names = [str(name.with_suffix("")) for name in names]
    seen: dict[str, Path] = {}
    for name, entry in zip(names, entries):
        if name in seen:
            raise IsnetError(f"datalist entries {seen[name]} and {entry} have the same name '{name}'")
        seen[name] = entry
    return names


def npz_from_images(image_dir: str | os.PathLike, output_dir: str | os.PathLike,
                    datalist: str | os.PathLike, size: tuple[int, int] | None = None,
                    suffixes: str | None = None) -> list[Path]:
    """Write one ``<name>.npz`` (``input_0``: uint8 3 x H x W RGB) per image, and the datalist.

    Sub-folders are mirrored. ``size`` (height, width) resizes with the registry's bilinear
    Resize; without it the decoded image is stored as is. Returns the npz paths in datalist order.
    """
    image_dir, output_dir = Path(image_dir), Path(output_dir)
    images = list_images(image_dir, suffixes)
    if not images:
        raise IsnetError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {image_dir}")
    resize = Resize(size=tuple(size)) if size is not None else None

    def convert(image: Path) -> Path:
        rgb = decode_image(image)
        if resize is not None:
            h, w = rgb.shape[:2]
            rgb, _ = resize.apply(rgb, Geometry((h, w), (0, 0, h, w)))
        target = (output_dir / image.relative_to(image_dir)).with_suffix(".npz")
        return write_npz(target, **{INPUT_KEY: np.ascontiguousarray(rgb.transpose(2, 0, 1))})

    threads = default_io_threads()
    with contextlib.closing(ordered_map(convert, images, threads, 2 * threads)) as written:
        paths = [path.resolve() for path in written]
    write_text_atomic(datalist, "".join(f"{path}\n" for path in paths))
    return paths


def _read_input(path: Path) -> np.ndarray:
    array = read_npz_array(path, INPUT_KEY, np.uint8, 3)
    if array.shape[0] != 3:
        raise IsnetError(f"{path}: '{INPUT_KEY}' has shape {list(array.shape)}, expected [3, H, W] (RGB)")
    return np.ascontiguousarray(array.transpose(1, 2, 0))


def run_npz(model: LoadedModel, datalist: str | os.PathLike, output_dir: str | os.PathLike,
            batch: int = 1, io_threads: int | None = None) -> list[Path]:
    """Run every input npz of ``datalist`` through ``model`` and write ``<output-dir>/<name>.npz``.

    The npz image goes through the model's own pre-processing (as a decoded file would), so the
    outputs equal ``isnet run``'s maps bit for bit at the same batch size. Returns the outputs
    in datalist order.
    """
    if batch < 1:
        raise IsnetError(f"batch must be at least 1, got {batch}")
    entries = read_datalist(datalist)
    names = datalist_names(entries)
    output_dir = Path(output_dir)
    io_threads = io_threads or default_io_threads()
    preprocessor = model.preprocessor
    written: list[Path] = []

    def load(index: int) -> tuple[int, np.ndarray, Geometry]:
        tensor, geometry = preprocessor.transform(_read_input(entries[index]))
        return index, tensor, geometry

    def save(index: int, output: np.ndarray, geometry: Geometry) -> Path:
        return write_npz(output_dir / f"{names[index]}.npz", **{
            OUTPUT_KEY: np.ascontiguousarray(output[None], dtype=np.float32),
            BOX_KEY: np.asarray(geometry.content_box, dtype=np.int64)})

    depth = 2 * batch + io_threads
    with OrderedSink(io_threads, depth, on_done=written.append) as sink, \
            contextlib.closing(ordered_map(load, range(len(entries)), io_threads, depth)) as loaded:
        for (index, _, geometry), output in predict_batches(model, loaded, batch, lambda item: item[1]):
            sink.submit(save, index, output, geometry)
    return written


def _source_image(image_dir: Path, name: str) -> Path:
    relative = PurePosixPath(name)
    folder = image_dir / relative.parent
    matches = []
    if folder.is_dir():
        matches = [entry for entry in sorted(folder.iterdir())
                   if entry.is_file() and entry.stem == relative.name
                   and entry.suffix.lower().lstrip(".") in IMAGE_SUFFIXES]
    if not matches:
        raise IsnetError(f"no source image named '{relative.name}.*' in {folder}")
    if len(matches) > 1:
        raise IsnetError(f"several source images named '{relative.name}' in {folder}: "
                         f"{', '.join(m.name for m in matches)}")
    return matches[0]


def read_output_map(path: str | os.PathLike) -> tuple[np.ndarray, tuple[int, int, int, int] | None]:
    """An output npz's saliency map (H x W float32) and its content box, if recorded."""
    path = Path(path)
    output = read_npz_array(path, OUTPUT_KEY, np.float32, 4)
    if output.shape[:2] != (1, 1):
        raise IsnetError(f"{path}: '{OUTPUT_KEY}' has shape {list(output.shape)}, expected [1, 1, H, W]")
    box = None
    with np.load(path, allow_pickle=False) as data:
        if BOX_KEY in data.files:
            values = data[BOX_KEY]
            if values.shape != (4,):
                raise IsnetError(f"{path}: '{BOX_KEY}' has shape {list(values.shape)}, expected [4]")
            box = tuple(int(v) for v in values)
    return output[0, 0], box


def png_from_npz(datalist: str | os.PathLike, npz_dir: str | os.PathLike, output_dir: str | os.PathLike,
                 image_dir: str | os.PathLike | None = None, min_max: bool = False) -> list[Path]:
    """Write ``<output-dir>/<name>.png`` (8-bit) for every datalist entry from ``<npz-dir>/<name>.npz``.

    With ``image_dir`` each mask is resized (bilinear, after cropping any padding) to the size of
    ``<image-dir>/<name>.<image suffix>``, exactly as ``isnet run`` restores its masks; without it,
    masks stay at the model's resolution. Returns the PNG paths in datalist order.
    """
    names = datalist_names(read_datalist(datalist))
    npz_dir, output_dir = Path(npz_dir), Path(output_dir)
    src = Path(image_dir) if image_dir is not None else None

    def draw(name: str) -> Path:
        saliency, box = read_output_map(npz_dir / f"{name}.npz")
        box = box or (0, 0, *saliency.shape)
        if src is not None:
            original_hw = decode_image(_source_image(src, name)).shape[:2]
        else:
            original_hw = (box[2], box[3])
        mask = mask_from_output(saliency, Geometry(original_hw, box), min_max=min_max)
        target = output_dir / f"{name}.png"
        with atomic_path(target) as tmp:
            encode_png(tmp, mask)
        return target

    threads = default_io_threads()
    with contextlib.closing(ordered_map(draw, names, threads, 2 * threads)) as drawn:
        return list(drawn)


@dataclass(frozen=True)
class NpzComparison:
    """Per-file differences (by name), the overall figures and names found on one side only."""

    files: tuple[OutputDifference, ...]
    overall: OutputDifference
    only_a: tuple[str, ...]
    only_b: tuple[str, ...]


def _npz_names(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise IsnetError(f"npz folder not found: {folder}")
    return {path.relative_to(folder).with_suffix("").as_posix(): path
            for path in sorted(folder.rglob("*.npz")) if not path.name.startswith(".")}


def compare_npz(dir_a: str | os.PathLike, dir_b: str | os.PathLike, key: str = OUTPUT_KEY) -> NpzComparison:
    """Compare ``key`` in the npz files two folders share by name (e.g. a compiled model vs fp32).

    Differences are computed in float64. Files present on one side only are listed, not compared;
    no common file, or a shape mismatch, is an :class:`IsnetError` naming the files.
    """
    files_a, files_b = _npz_names(Path(dir_a)), _npz_names(Path(dir_b))
    common = sorted(set(files_a) & set(files_b))
    if not common:
        raise IsnetError(f"{dir_a} and {dir_b} share no .npz file names ({len(files_a)} and {len(files_b)} files)")
    difference = DifferenceAccumulator()
    results = []
    for name in common:
        a = read_npz_array(files_a[name], key)
        b = read_npz_array(files_b[name], key)
        if a.shape != b.shape:
            raise IsnetError(f"'{key}' shapes differ: {files_a[name]} {list(a.shape)} vs "
                             f"{files_b[name]} {list(b.shape)}")
        results.append(difference.add(a, b, name))
    return NpzComparison(tuple(results), difference.total(),
                         tuple(sorted(set(files_a) - set(files_b))), tuple(sorted(set(files_b) - set(files_a))))
