"""The report of ``isnet compare``: the table, the gate, report.md / report.json, curves and the mask strip."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from isnet.build_in import decode_image, decode_mask
from isnet.core import atomic_path, write_text_atomic
from isnet.tools.compare.cache import jsonable
from isnet.tools.compare.experiment import METRIC_COLUMNS, Experiment

HEADERS = {"mae": "MAE", "maxfmeasure": "maxF", "avgfmeasure": "avgF", "adpfmeasure": "adpF", "maxem": "maxE",
           "avgem": "avgE", "adpem": "adpE", "sm": "Sm", "wfm": "wFm"}


@dataclass
class BuildReport:
    """Everything measured for one build."""

    name: str
    artifact: Path
    info: dict
    metrics: dict[str, float]
    curves: dict[str, np.ndarray]
    drift_mean_abs: float | None
    throughput_ips: float
    latency_p50_ms: float
    size_mb: float
    reused: list[str] = field(default_factory=list)
    calibration_overlap: int = 0
    nonfinite: int = 0  # NaN/inf values in its output maps on the drift images
    drift_resized: bool = False  # its maps were resized to the reference's size to measure drift
    picture_mae: dict[str, float] = field(default_factory=dict)  # each evaluation picture's MAE, by name

    @property
    def input_size(self) -> tuple[int, int] | None:
        shape = (self.info.get("input") or {}).get("shape")
        return (int(shape[2]), int(shape[3])) if shape and len(shape) == 4 else None

    @property
    def precision(self) -> str:
        return str(self.info.get("precision", "?"))

    @property
    def backend(self) -> str:
        return str(self.info.get("backend", "?"))

    @property
    def calibration_mode(self) -> str:
        calibration = self.info.get("calibration")
        return calibration["mode"] if calibration else "-"


@dataclass(frozen=True)
class FailedBuild:
    """A build of the experiment that could not be made, and why (one line)."""

    name: str
    backend: str
    precision: str
    reason: str


def _violations(report: BuildReport, ref: BuildReport | None, reference: str, max_delta: Mapping[str, float]
                ) -> list[str]:
    """Why ``report`` is outside the gate, one sentence each (none: within it)."""
    found = []
    if report.nonfinite:
        # A map with NaN or inf in it is broken whatever the tolerances say.
        found.append(f"{report.name}: {report.nonfinite} NaN/inf values in its output maps")
    if report.name == reference or ref is None:
        return found
    for metric, tolerance in max_delta.items():
        if metric == "drift":
            delta = report.drift_mean_abs
            if delta is not None and delta > tolerance:
                found.append(f"{report.name}: mean |diff| vs {reference} {delta:.4f} > {tolerance}")
            continue
        delta = report.metrics[metric] - ref.metrics[metric]
        if abs(delta) > tolerance:
            found.append(f"{report.name}: {metric} {report.metrics[metric]:.4f} vs {reference} "
                         f"{ref.metrics[metric]:.4f} (delta {delta:+.4f}, allowed {tolerance})")
    return found


def gate(reports: list[BuildReport], reference: str, max_delta: Mapping[str, float],
         failures: Sequence[FailedBuild] = ()) -> list[str]:
    """Each build that failed, and each whose metric moved from the reference by more than its tolerance,
    as a sentence."""
    ref = next((r for r in reports if r.name == reference), None)
    return [f"{f.name}: not built: {f.reason}" for f in failures] + [
        violation for report in reports for violation in _violations(report, ref, reference, max_delta)]


def recommend(reports: list[BuildReport], reference: str, max_delta: Mapping[str, float]) -> BuildReport | None:
    """The build to ship: the fastest (images/s) of those within ``max_delta`` of the reference (the
    reference itself included). None without bounds to judge by, or when no build is within them."""
    ref = next((r for r in reports if r.name == reference), None)
    if not max_delta or ref is None:
        return None
    within = [r for r in reports if not _violations(r, ref, reference, max_delta)]
    return max(within, key=lambda r: r.throughput_ips, default=None)


def recommendation_line(recommended: BuildReport | None, reports: list[BuildReport], reference: str,
                        max_delta: Mapping[str, float], host: Mapping) -> str:
    """One sentence: the build to ship on this machine, and why; or why there is none."""
    where = f"{host.get('cpu', 'this CPU')} ({', '.join(host.get('cpu_features') or ['no AVX2'])})"
    if not max_delta:
        return "no recommendation: give max_delta (the drift allowed from the reference) to have one"
    if recommended is None:
        return f"no build is within max_delta of {reference}: none recommended"
    ref = next(r for r in reports if r.name == reference)
    speedup = recommended.throughput_ips / ref.throughput_ips if ref.throughput_ips > 0 else float("nan")
    return (f"{recommended.name} ({recommended.backend} {recommended.precision}): the fastest build within max_delta, "
            f"{recommended.throughput_ips:.1f} images/s, {speedup:.2f}x {reference}, on {where}{_int8_paths(reports, ref, reference, max_delta)}; "
            "the fastest precision depends on the CPU's units (AMX and AVX-512 BF16 favour bf16, VNNI int8): "
            "measure on the machine you deploy to")


def _int8_paths(reports: list[BuildReport], ref: BuildReport, reference: str, max_delta: Mapping[str, float]) -> str:
    """Which backend's int8 is the faster on this CPU, from the fastest in-bounds int8 build of each
    (a clause; empty unless two backends have one)."""
    fastest: dict[str, BuildReport] = {}
    for report in reports:
        if report.precision == "int8" and not _violations(report, ref, reference, max_delta):
            if report.backend not in fastest or report.throughput_ips > fastest[report.backend].throughput_ips:
                fastest[report.backend] = report
    if len(fastest) < 2:
        return ""
    first, second = sorted(fastest.values(), key=lambda r: -r.throughput_ips)[:2]
    return (f"; {first.backend} is the faster int8 path on this CPU ({first.name} {first.throughput_ips:.1f} images/s, "
            f"{second.name} {second.throughput_ips:.1f})")


# Pictures named per build as its worst, and added to the strip of masks over all builds.
WORST_PICTURES = 3
STRIP_WORST = 2


def picture_drift(report: BuildReport, ref: BuildReport | None) -> dict | None:
    """How ``report``'s per-picture MAE moved from the reference's: |change| p50, p95, max, and the
    pictures it moved most ({"name": change}); None for the reference itself, or without scores."""
    if ref is None or report is ref:
        return None
    names = [name for name in ref.picture_mae if name in report.picture_mae]
    if not names:
        return None
    change = np.array([report.picture_mae[name] - ref.picture_mae[name] for name in names])
    size = np.abs(change)
    worst = np.argsort(-size, kind="stable")[:WORST_PICTURES]
    return {"p50": float(np.quantile(size, 0.5)), "p95": float(np.quantile(size, 0.95)), "max": float(size.max()),
            "worst": {names[i]: float(change[i]) for i in worst}}


def worst_pictures(reports: list[BuildReport], reference: str, count: int = STRIP_WORST) -> list[str]:
    """The pictures some build moved most from the reference (largest per-picture |change of MAE|)."""
    ref = next((r for r in reports if r.name == reference), None)
    worst: dict[str, float] = {}
    for report in reports:
        drift = picture_drift(report, ref)
        for name, change in (drift or {}).get("worst", {}).items():
            worst[name] = max(worst.get(name, 0.0), abs(change))
    return sorted(worst, key=lambda name: -worst[name])[:count]


def table_rows(reports: list[BuildReport], reference: str, failures: Sequence[FailedBuild] = ()
               ) -> tuple[list[str], list[list[str]]]:
    """The report table: header and rows of formatted cells; failed builds last, marked as such."""
    sizes = {r.input_size for r in reports}
    header = ["build", "backend", "precision", "calibration", *(["input"] if len(sizes) > 1 else []), "size MB",
              *[HEADERS[m] for m in METRIC_COLUMNS], f"drift vs {reference}", "images/s", "p50 ms"]
    rows = []
    for r in reports:
        size = [f"{r.input_size[0]}x{r.input_size[1]}" if r.input_size else "?"] if len(sizes) > 1 else []
        rows.append([r.name, r.backend, r.precision, r.calibration_mode, *size, f"{r.size_mb:.1f}",
                     *[f"{r.metrics[m]:.4f}" for m in METRIC_COLUMNS],
                     "-" if r.drift_mean_abs is None else f"{r.drift_mean_abs:.2e}",
                     f"{r.throughput_ips:.1f}", f"{r.latency_p50_ms:.1f}"])
    for f in failures:
        rows.append([f.name, f.backend, f.precision, "FAILED", *[""] * (len(header) - 4)])
    return header, rows


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A GitHub-flavoured Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def write_report(experiment: Experiment, reports: list[BuildReport], notes: list[str], violations: list[str],
                 mask_dirs: dict[str, Path], images: list[Path], photo_masks: dict[str, Path] | None = None,
                 photos: list[Path] = (), failures: Sequence[FailedBuild] = (), host: Mapping | None = None
                 ) -> dict[str, Path]:
    """Write report.md, report.json, the curve plots, the accuracy-speed plot and the mask strip; return
    their paths."""
    from isnet.eval import EvalResult, plot_curves

    out = experiment.output
    header, rows = table_rows(reports, experiment.reference, failures)
    results = {experiment.name: {r.name: EvalResult(metrics=r.metrics, curves=r.curves, num_images=len(images))
                                 for r in reports}}
    plots = plot_curves(out, results) if reports else []
    count = min(experiment.strip_images, len(images)) if reports else 0
    picks = [images[round(i * (len(images) - 1) / max(count - 1, 1))] for i in range(count)] if count else []
    by_stem = {image.stem: image for image in images}
    worst = [by_stem[name] for name in worst_pictures(reports, experiment.reference) if name in by_stem]
    picks += [image for image in worst if image not in picks]
    names = [r.name for r in reports]
    strip_rows = [(image, experiment.masks / f"{image.stem}.png", {b: mask_dirs[b] / f"{image.stem}.png" for b in names})
                  for image in picks]
    strip_rows += [(photo, None, {b: photo_masks[b] / f"{photo.stem}.png" for b in names}) for photo in photos
                   if reports]
    strip = strip_image(out / "strip.png", strip_rows, names) if strip_rows else None
    speed = accuracy_speed_plot(out / "accuracy_speed.png", reports) if reports else None

    host = host or {}
    recommended = recommend(reports, experiment.reference, experiment.max_delta)
    advice = recommendation_line(recommended, reports, experiment.reference, experiment.max_delta, host)
    md = [f"# {experiment.name}: accuracy and speed per build", "",
          f"Measured on {host.get('cpu', 'an unknown CPU')}, {host.get('logical_cores', '?')} logical cores; "
          f"CPU features: {', '.join(host.get('cpu_features') or []) or 'none of AMX, AVX-512, AVX2'}.", "",
          f"**Recommended:** {advice}", "",
          f"{len(images)} images from `{experiment.images}`, ground truth `{experiment.masks}`. "
          f"Drift is the mean absolute difference of the raw output maps from build `{experiment.reference}` on "
          f"{min(experiment.run.drift_images, len(images))} images; speed is inference only, batch "
          f"{experiment.profile.batch}, {experiment.profile.seconds:g} s per build.", "",
          markdown_table(header, rows), ""]
    if failures:
        md += ["## Builds that failed", ""] + [f"- {f.name}: {f.reason}" for f in failures] + [""]
    ref = next((r for r in reports if r.name == experiment.reference), None)
    drifts = {r.name: picture_drift(r, ref) for r in reports}
    if any(drifts.values()):
        md += ["## Per-picture drift", "",
               f"How far each picture's MAE moved from `{experiment.reference}`'s: a build whose mean holds can "
               "still fail a few pictures badly.", "",
               markdown_table(["build", "p50 |dMAE|", "p95 |dMAE|", "max |dMAE|", "worst pictures (dMAE)"],
                              [[name, f"{d['p50']:.4f}", f"{d['p95']:.4f}", f"{d['max']:.4f}",
                                ", ".join(f"{picture} ({change:+.4f})" for picture, change in d["worst"].items())]
                               for name, d in drifts.items() if d]), ""]
    if speed:
        md += ["## Accuracy against speed", "", f"![accuracy against images/s]({speed.name})", ""]
    if plots:
        md += ["## Curves", ""] + [f"![PR and F-measure curves]({p.name})" for p in plots] + [""]
    if strip:
        md += ["## Masks side by side", ""]
        if worst:
            md += [f"Besides evenly spaced pictures, the strip shows those a build moved most from "
                   f"`{experiment.reference}`: {', '.join(image.name for image in worst)}.", ""]
        if photos:
            md += [f"The last {len(photos)} rows are photographs without ground truth "
                   f"({', '.join(p.name for p in photos)}), run by every build.", ""]
        md += [f"![masks per build]({strip.name})", ""]
    if experiment.max_delta:
        md += ["## Gate", "", "Allowed drift from the reference: "
               + ", ".join(f"{k} {v}" for k, v in experiment.max_delta.items()), ""]
        md += [f"- FAIL {v}" for v in violations] or ["- all builds within tolerance"]
        md.append("")
    if notes:
        md += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    report_md = write_text_atomic(out / "report.md", "\n".join(md))
    payload = {
        "name": experiment.name, "images": str(experiment.images), "masks": str(experiment.masks),
        "reference": experiment.reference, "max_delta": dict(experiment.max_delta), "violations": violations,
        "recommended": recommended.name if recommended else None, "recommendation": advice, "host": dict(host),
        "notes": notes,
        "builds": [{"name": r.name, "artifact": str(r.artifact), "backend": r.backend, "precision": r.precision,
                    "calibration": r.calibration_mode, "size_mb": r.size_mb, "metrics": r.metrics,
                    "drift_mean_abs": r.drift_mean_abs, "throughput_ips": r.throughput_ips,
                    "latency_p50_ms": r.latency_p50_ms, "reused": r.reused, "nonfinite": r.nonfinite,
                    "picture_drift": drifts[r.name],
                    "calibration_overlap": r.calibration_overlap,
                    "input_size": list(r.input_size) if r.input_size else None} for r in reports],
        "failed": [{"name": f.name, "backend": f.backend, "precision": f.precision, "reason": f.reason}
                   for f in failures],
    }
    report_json = write_text_atomic(out / "report.json", json.dumps(payload, indent=2, default=jsonable) + "\n")
    files = {"report.md": report_md, "report.json": report_json}
    files.update({p.name: p for p in plots})
    if strip:
        files[strip.name] = strip
    if speed:
        files[speed.name] = speed
    return files


def accuracy_speed_plot(path: Path, reports: list[BuildReport]) -> Path:
    """S-measure and MAE of every build against its images/s, each point named: what a faster build costs."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11, 4.5), layout="constrained")
    FigureCanvasAgg(figure)
    for ax, metric, label in zip(figure.subplots(1, 2), ("sm", "mae"), ("S-measure (higher is better)",
                                                                       "MAE (lower is better)")):
        for report in reports:
            ax.scatter(report.throughput_ips, report.metrics[metric], s=30)
            ax.annotate(report.name, (report.throughput_ips, report.metrics[metric]), fontsize=8,
                        xytext=(4, 4), textcoords="offset points")
        ax.set_xlabel("images/s (inference only)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=90)
    return path


def strip_image(path: Path, rows: list[tuple[Path, Path | None, dict[str, Path]]], builds: list[str]) -> Path:
    """A grid: one row per (image, GT or None, {build: mask}), columns labelled: image, GT, each build's mask."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    columns = ["image", "ground truth", *builds]
    figure = Figure(figsize=(2.2 * len(columns), 2.2 * len(rows) + 0.4), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(rows), len(columns), squeeze=False)
    for row, (image, gt, masks) in enumerate(rows):
        panels = [decode_image(image), decode_mask(gt) if gt is not None else None]
        panels += [decode_mask(masks[b]) for b in builds]
        for col, panel in enumerate(panels):
            ax = axes[row][col]
            if panel is None:
                ax.text(0.5, 0.5, "no ground truth", ha="center", va="center", fontsize=9, color="0.4")
                ax.set_axis_off()
            else:
                ax.imshow(panel, cmap=None if panel.ndim == 3 else "gray", vmin=0, vmax=255)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(columns[col], fontsize=10)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=80)
    return path
