"""The stages of ``isnet compare``: export once, build, run, evaluate, profile, drift, each cached.

Every stage records the digest of its inputs (:mod:`isnet.tools.compare.cache`); a rerun reuses
what did not change.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
from isnet.build_in import build_artifact, list_images, read_build_info
from isnet.build_in.budget import describe_budget
from isnet.build_in.builder import build_code_digest
from isnet.build_in.config import FrontendType
from isnet.build_in.difference import DifferenceAccumulator
from isnet.core import IsnetError, digest_of, sha256_file, write_bytes_atomic
from isnet.core.defaults import INPUT_SIZE
from isnet.eval import selection_scores
from isnet.tools.compare.cache import StageCache, artifact_key, image_list_key
from isnet.tools.compare.experiment import BuildEntry, Experiment
from isnet.tools.compare.report import BuildReport, FailedBuild, gate, recommend, recommendation_line, write_report

Progress = Callable[[str, int, int], None]


@dataclass
class CompareResult:
    """The report folder, the per-build figures and the gate's verdict."""

    output: Path
    reports: list[BuildReport]
    reference: str
    violations: list[str]
    warnings: list[str]
    files: dict[str, Path]
    # Builds that could not be made (a budget that cannot be met, a backend's refusal), with their reasons.
    failures: list[FailedBuild] = field(default_factory=list)
    # Wall seconds per stage of this run (export, build, run, eval, profile, drift, photos, report).
    # export, build, photos and report are always timed (a reused one costs its cache check); run,
    # eval, profile and drift appear only when they ran.
    stage_seconds: dict[str, float] = field(default_factory=dict)
    # The fastest build within max_delta (None without bounds, or when none is within them).
    recommended: BuildReport | None = None
    recommendation: str = ""


class _StageClock:
    """Wall time spent in each stage, summed over builds."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - start


def _build_stage(entry: BuildEntry, force: bool, progress: Progress | None) -> tuple[dict, bool]:
    """Build (or reuse) one artifact; return its build.json and whether it was reused."""
    if entry.config is None:
        return read_build_info(entry.artifact), True
    target = entry.config.artifact_dir
    if target.is_dir() and not force:
        try:
            info = read_build_info(target)
        except IsnetError:
            info = None
        if (info and info.get("config") == entry.config.to_dict()
                and info.get("source", {}).get("sha256") == sha256_file(entry.config.frontend.checkpoint)
                and info.get("versions", {}).get("isnet_code") == build_code_digest()):
            return info, True
    result = build_artifact(entry.config, force=True, scorer=partial(selection_scores, smeasure=True),
                            progress=(lambda stage, n, total: progress(f"{entry.name} {stage}", n, total))
                            if progress else None)
    return result.info, False


def _export_once(experiment: Experiment, cache: StageCache, force: bool) -> tuple[BuildEntry, ...]:
    """Export a ``.pth`` source to ONNX once, and point every build made from it at that file."""
    from isnet.export.exporter import ExportRequest, export_model

    from_model = [e for e in experiment.builds if e.config is not None
                  and e.config.frontend.type is FrontendType.PYTORCH and e.config.frontend.checkpoint == experiment.model]
    if not from_model:
        return experiment.builds
    target = experiment.output / "source" / f"{experiment.model.stem}.onnx"
    size = experiment.input_size or INPUT_SIZE
    inputs = digest_of({"model": sha256_file(experiment.model), "size": size, "code": build_code_digest()})
    if force or cache.get("export", "source", inputs) is None or not target.is_file():
        export_model(ExportRequest(weights=str(experiment.model), size=size, output_dir=target.parent,
                                   name=target.stem, formats=("onnx",)))
        cache.put("export", "source", inputs, {"onnx": str(target)})
    builds = []
    for entry in experiment.builds:
        if entry in from_model:
            frontend = dataclasses.replace(entry.config.frontend, type=FrontendType.ONNX, checkpoint=target)
            entry = dataclasses.replace(entry, config=dataclasses.replace(entry.config, frontend=frontend))
        builds.append(entry)
    return tuple(builds)


def _drift(reference_maps: Path, maps: Path, relatives: list[str]) -> dict:
    """Mean |difference| of two builds' raw output maps (kept by the run stage), and the number of
    NaN/inf values (left out of the mean). A map of another size (a build at another input size) is
    resized (bilinear) to the reference's first (``resized``)."""
    import cv2

    difference, resized = DifferenceAccumulator(), False
    for relative in relatives:
        want, have = np.load(reference_maps / f"{relative}.npy"), np.load(maps / f"{relative}.npy")
        if want.shape != have.shape:
            height, width = want.shape[-2:]
            have = cv2.resize(have.reshape(have.shape[-2:]), (width, height),
                              interpolation=cv2.INTER_LINEAR).reshape(want.shape)
            resized = True
        difference.add(want, have)
    total = difference.total()
    return {"mean_abs": total.mean_abs, "nonfinite": total.nonfinite, "resized": resized}


def _photo_stage(experiment: Experiment, infos: dict, cache: StageCache, force: bool,
                 progress: Progress | None) -> tuple[list[Path], dict[str, Path]]:
    """Run every build on ``report.photos`` (copied into ``<report>/photos/input``); return them and the mask folders."""
    from isnet.runtime import load_model, run_folder

    if not experiment.photos:
        return [], {}
    folder = experiment.output / "photos" / "input"
    folder.mkdir(parents=True, exist_ok=True)
    photos = []
    for source in experiment.photos:
        target = folder / source.name
        if not target.is_file() or target.read_bytes() != source.read_bytes():
            write_bytes_atomic(target, source.read_bytes())
        photos.append(target)
    for stale in set(folder.iterdir()) - set(photos):
        stale.unlink()
    photos_key = image_list_key(photos)
    masks = {}
    for entry in experiment.builds:
        masks[entry.name] = out = experiment.output / "photos" / "masks" / entry.name
        inputs = digest_of({"artifact": artifact_key(infos[entry.name][0]), "photos": photos_key})
        if not force and cache.get("photos", entry.name, inputs) is not None and out.is_dir():
            continue
        step = (lambda n, total, name=entry.name: progress(f"{name} photos", n, total)) if progress else None
        result = run_folder(load_model(entry.artifact_dir, threads=experiment.run.threads), folder, out,
                            batch=experiment.run.batch, io_threads=experiment.run.io_threads, progress=step)
        if result.failed:
            raise IsnetError(f"{entry.name}: {result.failed} photos failed; see {result.failures_path}")
        cache.put("photos", entry.name, inputs, {"done": result.done})
    return photos, masks


def run_experiment(experiment: Experiment, force: bool = False, progress: Progress | None = None) -> CompareResult:
    """Build, run, evaluate and profile every build; write the report; check the gate."""
    from isnet.eval import evaluate_folders
    from isnet.runtime import load_model, profile_model, run_folder

    out = experiment.output
    out.mkdir(parents=True, exist_ok=True)
    cache = StageCache(out)
    images = list_images(experiment.images)
    if not images:
        raise IsnetError(f"no images in {experiment.images}")
    image_hashes = {sha256_file(p): p for p in images}
    image_key = image_list_key(images)
    mask_key = image_list_key(list_images(experiment.masks))
    run, profile = experiment.run, experiment.profile
    drift_relatives = [p.relative_to(experiment.images).as_posix() for p in images[: run.drift_images]]
    notes: list[str] = list(experiment.notes)
    reports: list[BuildReport] = []
    mask_dirs: dict[str, Path] = {}

    clock = _StageClock()
    with clock("export"):
        experiment = dataclasses.replace(experiment, builds=_export_once(experiment, cache, force))
    infos, failed = {}, {}
    with clock("build"):
        for entry in experiment.builds:
            try:
                infos[entry.name] = _build_stage(entry, force, progress)
            except IsnetError as exc:
                # One build the user's settings cannot make (its budget, a backend's refusal) must not throw
                # away the others: it is reported as failed, with its reason, and the gate fails.
                failed[entry.name] = str(exc)
    all_builds = experiment.builds
    built = tuple(entry for entry in all_builds if entry.name not in failed)
    experiment = dataclasses.replace(experiment, builds=built)

    for entry in experiment.builds:
        info, built_reused = infos[entry.name]
        artifact = entry.artifact_dir
        reused = ["build"] if built_reused else []
        key = artifact_key(info)

        warning = (info.get("fidelity") or {}).get("warning")
        if warning:
            notes.append(f"{entry.name}: {warning}")
        budget = ((info.get("backend_details") or {}).get("plan") or {}).get("budget")
        if budget:
            notes.append(f"{entry.name}: {describe_budget(budget, info['backend'])}")
        calibration = info.get("calibration") or {}
        overlap = sum(1 for item in calibration.get("images", []) if item["sha256"] in image_hashes)
        if overlap:
            notes.append(f"{entry.name}: {overlap} of the {len(images)} evaluation images were also calibration "
                         "images; its scores are optimistic")

        masks = out / "masks" / entry.name
        mask_dirs[entry.name] = masks
        # The run keeps the raw maps of the drift images, so drift needs no second inference.
        run_inputs = digest_of({"artifact": key, "images": image_key, "batch": run.batch,
                                "maps": drift_relatives})
        if not force and cache.get("run", entry.name, run_inputs) is not None and masks.is_dir() \
                and (out / "maps" / entry.name).is_dir():
            reused.append("masks")
        else:
            with clock("run"):
                model = load_model(artifact, threads=run.threads)
                step = (lambda n, total, name=entry.name: progress(f"{name} run", n, total)) if progress else None
                result = run_folder(model, experiment.images, masks, batch=run.batch, io_threads=run.io_threads,
                                    progress=step, maps_dir=out / "maps" / entry.name, maps_for=drift_relatives)
            if result.failed:
                raise IsnetError(f"{entry.name}: {result.failed} images failed; see {result.failures_path}")
            cache.put("run", entry.name, run_inputs, {"done": result.done, "seconds": result.seconds})

        eval_inputs = digest_of({"run": run_inputs, "masks": mask_key, "picture_mae": True})
        scored = None if force else cache.get("eval", entry.name, eval_inputs)
        if scored is None:
            with clock("eval"):
                scoring = (lambda stage, n, total, name=entry.name: progress(f"{name} eval", n, total)) if progress else None
                result = evaluate_folders(masks, experiment.masks, progress=scoring)
            scored = {"metrics": result.metrics, "curves": {k: v.tolist() for k, v in result.curves.items()},
                      "picture_mae": result.picture_mae}
            cache.put("eval", entry.name, eval_inputs, scored)
        else:
            reused.append("scores")

        profile_inputs = digest_of({"artifact": key, "seconds": profile.seconds, "batch": profile.batch,
                                    "threads": run.threads})
        profiled = None if force else cache.get("profile", entry.name, profile_inputs)
        if profiled is None:
            shown = [0]

            def profiled_fraction(fraction: float, name=entry.name) -> None:
                step = int(fraction * 100) - shown[0]
                if step > 0 and progress:
                    progress(f"{name} profile", step, 100)
                    shown[0] += step

            with clock("profile"):
                record = profile_model(artifact, batches=(profile.batch,), threads=run.threads,
                                       duration=profile.seconds, iterations=None, image_dir=experiment.images,
                                       progress=profiled_fraction if progress else None)[0]
            profiled = {"throughput_ips": record.throughput_ips, "p50_ms": record.latency_ms.p50}
            cache.put("profile", entry.name, profile_inputs, profiled)
        else:
            reused.append("profile")

        files = [artifact / name for name in info.get("artifact_sha256", {})]
        reports.append(BuildReport(
            name=entry.name, artifact=artifact, info=info, metrics=scored["metrics"],
            curves={k: np.asarray(v) for k, v in scored["curves"].items()}, drift_mean_abs=None,
            throughput_ips=profiled["throughput_ips"], latency_p50_ms=profiled["p50_ms"],
            size_mb=sum(f.stat().st_size for f in files if f.is_file()) / 1e6, reused=reused,
            calibration_overlap=overlap, picture_mae=scored["picture_mae"]))

    # Drift of raw output maps against the reference build, on the first `drift_images` images.
    by_name = {r.name: r for r in reports}
    reference = by_name.get(experiment.reference)
    for report in reports:
        if report.name == experiment.reference:
            report.drift_mean_abs = 0.0
            report.nonfinite = sum(int(np.count_nonzero(~np.isfinite(np.load(out / "maps" / report.name / f"{r}.npy"))))
                                   for r in drift_relatives)
            continue
        if reference is None:
            continue  # the reference build failed: no drift to measure
        drift_inputs = digest_of({"ref": artifact_key(reference.info), "build": artifact_key(report.info),
                                  "images": image_list_key(images[: run.drift_images])})
        cached = None if force else cache.get("drift", report.name, drift_inputs)
        if cached is None:
            with clock("drift"):
                cached = _drift(out / "maps" / reference.name, out / "maps" / report.name, drift_relatives)
            cache.put("drift", report.name, drift_inputs, cached)
        report.drift_mean_abs = cached["mean_abs"]
        report.nonfinite = cached.get("nonfinite", 0)
        report.drift_resized = cached.get("resized", False)
    if any(r.drift_resized for r in reports):
        notes.append(f"drift of builds at another input size than {experiment.reference} is measured on their maps "
                     f"resized (bilinear) to {experiment.reference}'s size")

    with clock("photos"):
        photos, photo_masks = _photo_stage(experiment, infos, cache, force, progress)
    failures = [FailedBuild(entry.name, entry.config.backend.type.value if entry.config else "?",
                            entry.config.backend.dtype.value if entry.config else "?", failed[entry.name])
                for entry in all_builds if entry.name in failed]
    violations = gate(reports, experiment.reference, experiment.max_delta, failures)
    from isnet.runtime import host_info

    host = host_info()
    recommended = recommend(reports, experiment.reference, experiment.max_delta)
    with clock("report"):
        files = write_report(experiment, reports, notes, violations, mask_dirs, images, photo_masks, photos,
                             failures, host)
    return CompareResult(out, reports, experiment.reference, violations, notes, files, failures, clock.seconds,
                         recommended, recommendation_line(recommended, reports, experiment.reference,
                                                          experiment.max_delta, host))
