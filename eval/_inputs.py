"""Which files to score: PySODEvalToolkit's dataset / method JSON files, folder pairs, mask reading.

The JSON formats are PySODEvalToolkit's::

    datasets: {"ECSSD": {"mask": {"path": "...", "prefix": "", "suffix": ".png"}, "image": {...}}}
    methods:  {"MyNet": {"ECSSD": {"path": "...", "prefix": "", "suffix": ".png"}}}

A file ``<prefix><name><suffix>`` in ``path`` has the name ``<name>``; with no suffix the file
extension (an image one) is dropped instead. Predictions and GT masks are paired by name, never by
position. Where PySODEvalToolkit warns and carries on, this refuses: relative paths resolve against
the folder of the JSON file that holds them (not the working directory), a dataset named in one
JSON and not the other is an error, and so are GT masks without a prediction unless allowed.

Everything that can be checked without decoding (JSON, folders, names) is checked before any
scoring; a file that cannot be used stops the run when it is read. Every problem is an
:class:`IsnetError` with a one-line message naming the file or entry and what to do.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from isnet.build_in.imageio import IMAGE_SUFFIXES, decode_mask, pair_images_with_masks, read_file_bytes
from isnet.core import IsnetError, did_you_mean

_SOURCE_KEYS = ("path", "prefix", "suffix")
_DATASET_KEYS = ("mask", "image")
# Folder names that say "these are masks" rather than name the dataset.
_GENERIC_MASK_FOLDERS = {"mask", "masks", "gt", "gts", "groundtruth", "ground_truth", "ground-truth",
                         "label", "labels", "annotation", "annotations"}


@dataclass(frozen=True)
class MaskFolder:
    """A folder of maps named ``<prefix><name><suffix>``."""

    path: Path
    prefix: str = ""
    suffix: str = ""

    def name_of(self, filename: str) -> str | None:
        """The name a file in this folder stands for, or None if it does not belong."""
        if filename.startswith(".") or not filename.startswith(self.prefix):
            return None
        if self.suffix:
            if not filename.endswith(self.suffix) or len(filename) <= len(self.prefix) + len(self.suffix):
                return None
            return filename[len(self.prefix):len(filename) - len(self.suffix)]
        stem, dot, extension = filename.rpartition(".")
        if not dot or extension.lower() not in IMAGE_SUFFIXES or len(stem) <= len(self.prefix):
            return None
        return stem[len(self.prefix):]

    def describe(self) -> str:
        """How file names are expected to look, for messages."""
        return f"{self.path}{os.sep}{self.prefix}<name>{self.suffix or '.<image extension>'}"

    def files(self, what: str) -> dict[str, Path]:
        """Name -> file for every matching file (not recursive), sorted by name.

        ``what`` says whose folder this is, for messages.
        """
        if not self.path.is_dir():
            raise IsnetError(f"{what}: folder not found: {self.path}")
        found: dict[str, Path] = {}
        for entry in os.scandir(self.path):
            if not entry.is_file():
                continue
            name = self.name_of(entry.name)
            if name is None:
                continue
            if name in found:
                raise IsnetError(f"{what}: two files for the name '{name}' in {self.path} "
                                 f"({found[name].name}, {entry.name}); set the suffix to choose one")
            found[name] = Path(entry.path)
        return dict(sorted(found.items()))


@dataclass(frozen=True)
class EvalTask:
    """One method on one dataset: the (name, prediction file, GT file) triples to score."""

    dataset: str
    method: str
    pairs: tuple[tuple[str, Path, Path], ...]
    missing: tuple[str, ...] = ()


def _preview(names: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def match_pairs(dataset: str, method: str, gts: dict[str, Path], preds_folder: MaskFolder,
                allow_missing: bool) -> EvalTask:
    """Pair GT masks with predictions by name; refuse missing predictions unless allowed."""
    what = f"method '{method}' on dataset '{dataset}'"
    preds = preds_folder.files(f"predictions of {what}")
    present = [name for name in gts if name in preds]
    missing = [name for name in gts if name not in preds]
    if not present:
        others = sorted(entry.name for entry in os.scandir(preds_folder.path) if not entry.name.startswith("."))
        seen = f"; it holds {len(others)} files such as '{others[0]}'" if others else "; it is empty"
        raise IsnetError(f"{what}: none of the {len(gts)} GT names has a prediction "
                         f"({preds_folder.describe()}){seen}")
    if missing and not allow_missing:
        raise IsnetError(f"{what}: {len(missing)} of {len(gts)} GT masks have no prediction in "
                         f"{preds_folder.path} ({_preview(missing)}); pass --allow-missing to evaluate "
                         f"the {len(present)} present")
    return EvalTask(dataset, method, tuple((name, preds[name], gts[name]) for name in present), tuple(missing))


def gt_files(dataset: str, folder: MaskFolder) -> dict[str, Path]:
    """The GT masks of a dataset, refusing an empty set."""
    files = folder.files(f"GT masks of dataset '{dataset}'")
    if not files:
        raise IsnetError(f"dataset '{dataset}': no GT masks in {folder.path} (expected {folder.describe()})")
    return files


def _dataset_name_from_folder(gt_dir: Path) -> str:
    gt_dir = gt_dir.resolve()
    if gt_dir.name.lower() in _GENERIC_MASK_FOLDERS and gt_dir.parent.name:
        return gt_dir.parent.name
    return gt_dir.name


def plan_from_folders(pred_dir: str | os.PathLike, gt_dir: str | os.PathLike, *, method: str | None = None,
                      names: Iterable[str] | None = None, allow_missing: bool = False) -> EvalTask:
    """One task from a prediction folder and a GT folder, paired by file stem.

    The method is named ``method`` or after the prediction folder; the dataset after the GT folder
    (or its parent when the folder is called ``mask``, ``gt`` or the like). ``names`` restricts the
    evaluation to those GT names (each must exist).
    """
    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    dataset = _dataset_name_from_folder(gt_dir)
    method = method or pred_dir.resolve().name
    gts = gt_files(dataset, MaskFolder(gt_dir))
    if names is not None:
        wanted = list(dict.fromkeys(names))
        unknown = [name for name in wanted if name not in gts]
        if unknown:
            raise IsnetError(f"dataset '{dataset}': no GT mask in {gt_dir} for {len(unknown)} requested "
                             f"names ({_preview(unknown)})")
        if not wanted:
            raise IsnetError("an empty list of names to evaluate")
        gts = {name: gts[name] for name in sorted(wanted)}
    return match_pairs(dataset, method, gts, MaskFolder(pred_dir), allow_missing)


# -- ECSSD layout ----------------------------------------------------------------------------------

def ecssd_folders(root: str | os.PathLike, what: str = "dataset", name: str | None = None) -> tuple[Path, Path]:
    """The image and mask folders of a dataset: a folder in ECSSD layout (``image/``, ``mask/``), or
    dataset ``name`` of a PySODEvalToolkit dataset JSON (``name`` may be omitted when it holds one).

    IsnetError naming ``what`` when the folders are absent. Images and masks are paired by file
    stem, so JSON prefixes are refused.
    """
    root = Path(root)
    if root.suffix.lower() == ".json" and root.is_file():
        return _folders_from_json(root, name)
    if name is not None:
        raise IsnetError(f"{what}: a dataset name applies to a dataset JSON, not to the folder {root}")
    if not root.is_dir():
        raise IsnetError(f"{what} folder not found: {root}")
    images, masks = root / "image", root / "mask"
    if not images.is_dir() or not masks.is_dir():
        raise IsnetError(f"{what} folder {root} needs image/ and mask/ sub-folders (ECSSD layout)")
    return images, masks


def ecssd_pairs(root: str | os.PathLike, what: str = "dataset") -> list[tuple[str, Path, Path]]:
    """``(stem, image, mask)`` for every image of an ECSSD-layout folder, sorted by stem.

    Every image needs a mask with the same stem (a PNG mask wins over another format), and stems
    must be unique; either problem is an IsnetError.
    """
    return pair_images_with_masks(*ecssd_folders(root, what))


def _folders_from_json(path: Path, name: str | None) -> tuple[Path, Path]:
    data = _load_json(path, "dataset JSON")
    if name is None and len(data) == 1:
        name = next(iter(data))
    if name not in data:
        raise IsnetError(f"{path}: choose one dataset of {', '.join(data)}"
                         + (f"; '{name}' is not one{did_you_mean(name, data)}" if name else ""))
    entry = data[name]
    where = f"{path}: dataset '{name}'"
    if not isinstance(entry, dict) or not all(k in entry for k in _DATASET_KEYS):
        raise IsnetError(f"{where}: needs both 'image' and 'mask' entries ({{'path': ...}})")
    _refuse_unknown_keys(entry, _DATASET_KEYS, where)
    image, mask = (_source(entry[k], f"{where} {k}", path.parent) for k in _DATASET_KEYS[::-1])
    for folder in (image, mask):
        if folder.prefix or (folder.suffix and not folder.suffix.startswith(".")):
            raise IsnetError(f"{where}: images and masks are paired by file stem here; a prefix or a suffix other "
                             f"than a file extension ('{folder.prefix}', '{folder.suffix}') is not supported")
    return image.path, mask.path


# -- JSON ------------------------------------------------------------------------------------------

def _load_json(path: Path, what: str) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise IsnetError(f"{what} not found: {path}") from None
    except UnicodeDecodeError:
        raise IsnetError(f"{what} {path}: not a text file (a JSON file was expected)") from None
    except OSError as exc:
        raise IsnetError(f"{what} {path}: cannot read ({exc.strerror or exc})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise IsnetError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    if not isinstance(data, dict) or not data:
        raise IsnetError(f"{path}: expected a non-empty JSON object {{name: {{...}}}}")
    return data


def _refuse_unknown_keys(entry: dict, valid: Sequence[str], where: str) -> None:
    for key in entry:
        if key not in valid:
            raise IsnetError(f"{where}: unknown key '{key}'{did_you_mean(key, valid)}; valid keys: {', '.join(valid)}")


def _source(entry, where: str, base: Path) -> MaskFolder:
    """A {path, prefix, suffix} entry as a MaskFolder, paths relative to ``base``."""
    if not isinstance(entry, dict):
        raise IsnetError(f"{where}: expected an object with 'path' and optional 'prefix', 'suffix'")
    _refuse_unknown_keys(entry, _SOURCE_KEYS, where)
    if "path" not in entry:
        raise IsnetError(f"{where}: missing 'path'")
    for key in _SOURCE_KEYS:
        if key in entry and not isinstance(entry[key], str):
            raise IsnetError(f"{where}: '{key}' must be a string")
    path = Path(os.path.expanduser(entry["path"]))
    return MaskFolder(path if path.is_absolute() else base / path, entry.get("prefix", ""), entry.get("suffix", ""))


def load_dataset_json(path: str | os.PathLike) -> dict[str, MaskFolder]:
    """Dataset name -> GT mask folder, from a PySODEvalToolkit dataset JSON (``image`` is unused)."""
    path = Path(path)
    data = _load_json(path, "dataset JSON")
    datasets = {}
    for name, entry in data.items():
        where = f"{path}: dataset '{name}'"
        if not isinstance(entry, dict):
            raise IsnetError(f"{where}: expected an object with a 'mask' entry")
        _refuse_unknown_keys(entry, _DATASET_KEYS, where)
        if "mask" not in entry:
            raise IsnetError(f"{where}: missing 'mask' ({{'path': ..., 'suffix': ...}})")
        datasets[name] = _source(entry["mask"], f"{where} mask", path.parent)
    return datasets


def load_method_json(paths: Sequence[str | os.PathLike]) -> dict[str, dict[str, MaskFolder]]:
    """Method name -> dataset name -> prediction folder, merged from PySODEvalToolkit method JSONs."""
    methods: dict[str, dict[str, MaskFolder]] = {}
    origin: dict[str, Path] = {}
    for path in map(Path, paths):
        data = _load_json(path, "method JSON")
        for method, entry in data.items():
            if method in methods:
                raise IsnetError(f"method '{method}' is defined in both {origin[method]} and {path}")
            if not isinstance(entry, dict) or not entry:
                raise IsnetError(f"{path}: method '{method}': expected an object {{dataset: {{path, prefix, suffix}}}}")
            methods[method] = {dataset: _source(source, f"{path}: method '{method}' dataset '{dataset}'", path.parent)
                               for dataset, source in entry.items()}
            origin[method] = path
    return methods


def _select(names: Sequence[str], include: Sequence[str] | None, what: str, flag: str) -> list[str]:
    if include is None:
        return list(names)
    for name in include:
        if name not in names:
            raise IsnetError(f"{flag}: unknown {what} '{name}'{did_you_mean(name, names)}; "
                             f"known: {', '.join(names)}")
    chosen = set(include)
    return [name for name in names if name in chosen]


def plan_from_json(dataset_json: str | os.PathLike, method_jsons: Sequence[str | os.PathLike], *,
                   include_datasets: Sequence[str] | None = None, include_methods: Sequence[str] | None = None,
                   allow_missing: bool = False) -> list[EvalTask]:
    """Tasks for every selected method on every selected dataset, all files checked.

    Datasets keep the dataset JSON's order and methods the method JSONs' order. Every selected
    method must have predictions for every selected dataset, and (when no dataset selection is
    given) no method may name a dataset the dataset JSON lacks: a name in one JSON and not the
    other is refused, with the closest match and ``--include-datasets`` as the way out.
    """
    datasets = load_dataset_json(dataset_json)
    methods = load_method_json(method_jsons)
    dataset_names = _select(list(datasets), include_datasets, "dataset", "--include-datasets")
    method_names = _select(list(methods), include_methods, "method", "--include-methods")
    for method in method_names:
        for dataset in dataset_names:
            if dataset not in methods[method]:
                raise IsnetError(f"method '{method}' has no entry for dataset '{dataset}'"
                                 f"{did_you_mean(dataset, methods[method])} in the method JSON; add one, "
                                 f"or pick datasets with --include-datasets")
        if include_datasets is None:
            for dataset in methods[method]:
                if dataset not in datasets:
                    raise IsnetError(f"method '{method}' lists dataset '{dataset}', which {dataset_json} does "
                                     f"not define{did_you_mean(dataset, datasets)}; pick datasets with "
                                     f"--include-datasets")
    tasks = []
    for dataset in dataset_names:
        gts = gt_files(dataset, datasets[dataset])
        for method in method_names:
            tasks.append(match_pairs(dataset, method, gts, methods[method][dataset], allow_missing))
    return tasks


# -- reading ---------------------------------------------------------------------------------------

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _check_png_layout(path: Path, data: np.ndarray) -> None:
    """Refuse PNG masks that the 8-bit grayscale reading of every SOD toolkit would silently spoil.

    Colour (RGB, RGBA, palette) masks whose channels differ would be turned into luminance, and
    16-bit masks holding values below 256 would be divided by 256 to all-black. Gray-looking colour
    files and full-range 16-bit files are read the toolkit's way.
    """
    head = data[:26].tobytes()
    if head[:8] != _PNG_SIGNATURE or head[12:16] != b"IHDR":
        return
    bit_depth, colour_type = head[24], head[25]
    if bit_depth <= 8 and colour_type in (0, 4):
        return
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if image is None:
        return
    if image.ndim == 3 and image.shape[2] >= 3:
        colour = image[..., :3]
        if not (np.array_equal(colour[..., 0], colour[..., 1]) and np.array_equal(colour[..., 1], colour[..., 2])):
            raise IsnetError(f"{path}: a colour mask (its red, green and blue differ); the grayscale "
                             f"conversion PySODEvalToolkit applies would score a different mask; save masks "
                             f"as single-channel grayscale")
    if image.dtype == np.uint16:
        peak = int(image.max())
        if 0 < peak < 256:
            raise IsnetError(f"{path}: a 16-bit mask whose values stop at {peak}; reading it as 8-bit (as "
                             f"PySODEvalToolkit does) divides by 256 and leaves it black; save it as 8-bit")


def read_mask(path: Path, is_gt: bool) -> np.ndarray:
    """Decode a prediction or GT mask to uint8 (H, W) the way PySODEvalToolkit reads it, refusing bad ones."""
    data = read_file_bytes(path)
    _check_png_layout(path, data)
    mask = decode_mask(path, data)
    if is_gt:
        peak = int(mask.max())
        if 0 < peak <= 128:
            raise IsnetError(f"{path}: GT mask with values up to {peak} only; binarised at > 128 (as "
                             f"PySODEvalToolkit does) it would be empty; is it a 0/1 label map? save it as 0/255")
    return mask


def read_pair(pred_path: Path, gt_path: Path) -> tuple[np.ndarray, np.ndarray, bool]:
    """Prediction and GT as uint8, the prediction resized to the GT when sizes differ.

    The resize is bilinear (``cv2.INTER_LINEAR``), as PySODEvalToolkit does; the flag says whether
    it happened.
    """
    gt = read_mask(gt_path, is_gt=True)
    pred = read_mask(pred_path, is_gt=False)
    if pred.shape == gt.shape:
        return pred, gt, False
    pred = cv2.resize(pred, (gt.shape[1], gt.shape[0]), interpolation=cv2.INTER_LINEAR)
    return pred, gt, True
