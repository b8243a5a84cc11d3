"""Tables, record files and curve plots of evaluation results; every file is written atomically.

Results are ``{dataset: {method: EvalResult}}`` as returned by :func:`isnet.eval.evaluate_tasks`.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from pathlib import Path

import numpy as np

from isnet.eval._evaluator import EvalResult
from isnet.core import atomic_path, write_text_atomic

Results = dict[str, dict[str, EvalResult]]


def _rows(results: Results):
    for dataset, methods in results.items():
        for method, result in methods.items():
            yield dataset, method, result


def _metric_keys(results: Results) -> list[str]:
    keys: list[str] = []
    for _, _, result in _rows(results):
        keys += [key for key in result.metrics if key not in keys]
    return keys


def format_table(results: Results, num_bits: int = 3) -> str:
    """A plain-text table: one row per dataset and method, one column per metric, ``num_bits`` decimals."""
    keys = _metric_keys(results)
    header = ["dataset", "method", *keys]
    rows = [[dataset, method, *(f"{result.metrics[key]:.{num_bits}f}" if key in result.metrics else "-"
                                for key in keys)]
            for dataset, method, result in _rows(results)]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells):
        return "  ".join(cell.ljust(width) if i < 2 else cell.rjust(width)
                         for i, (cell, width) in enumerate(zip(cells, widths))).rstrip()

    return "\n".join([line(header), line(["-" * width for width in widths]), *map(line, rows)])


def write_json(path: str | os.PathLike, results: Results) -> Path:
    """``{dataset: {method: {metric: value}}}`` at full precision."""
    data = {dataset: {method: dict(result.metrics) for method, result in methods.items()}
            for dataset, methods in results.items()}
    return write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def write_txt(path: str | os.PathLike, results: Results, num_bits: int = 3) -> Path:
    """The console table as a text file."""
    return write_text_atomic(path, format_table(results, num_bits) + "\n")


def write_csv(path: str | os.PathLike, results: Results) -> Path:
    """``dataset,method,num_images,<metrics...>`` rows at full precision."""
    keys = _metric_keys(results)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["dataset", "method", "num_images", *keys])
    for dataset, method, result in _rows(results):
        writer.writerow([dataset, method, result.num_images,
                         *(repr(result.metrics[key]) if key in result.metrics else "" for key in keys)])
    return write_text_atomic(path, buffer.getvalue())


def save_curves(path: str | os.PathLike, results: Results) -> Path:
    """The curves as PySODEvalToolkit's ``--curves-npy``: ``np.save`` of ``{dataset: {method: {name: array}}}``.

    Names are ``precision``, ``recall``, ``fmeasure`` and ``em``, each 256 values indexed by
    threshold (t = 0..255, foreground where the map is >= t). Load with
    ``np.load(path, allow_pickle=True).item()``.
    """
    data = {dataset: {method: {name: np.asarray(curve) for name, curve in result.curves.items()}
                      for method, result in methods.items()}
            for dataset, methods in results.items()}
    with atomic_path(path) as tmp, open(tmp, "wb") as file:
        np.save(file, data, allow_pickle=True)
    return Path(path)


def _file_stem(name: str) -> str:
    return re.sub(r'[\\/:*?"<>|\s]+', "_", name).strip("._") or "dataset"


def plot_curves(plot_dir: str | os.PathLike, results: Results) -> list[Path]:
    """One PNG per dataset: PR curves and F-measure-vs-threshold curves of all its methods.

    Needs the ``precision``/``recall``/``fmeasure`` curves (any F-measure family metric).
    Uses matplotlib's Agg canvas directly, so no global backend is switched.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    written = []
    thresholds = np.arange(256)
    for dataset, methods in results.items():
        figure = Figure(figsize=(11, 4.6), layout="constrained")
        FigureCanvasAgg(figure)
        pr_axes, fm_axes = figure.subplots(1, 2)
        for method, result in methods.items():
            if "precision" not in result.curves:
                raise ValueError("plot_curves needs the F-measure curves; evaluate with 'fmeasure'")
            curves = result.curves
            pr_axes.plot(curves["recall"], curves["precision"], label=method, linewidth=1.6)
            fm_axes.plot(thresholds, curves["fmeasure"], label=method, linewidth=1.6)
        pr_axes.set(title=f"{dataset}: precision-recall", xlabel="recall", ylabel="precision",
                    xlim=(0, 1), ylim=(0, 1.02))
        fm_axes.set(title=f"{dataset}: F-measure (beta^2 = 0.3)", xlabel="threshold", ylabel="F-measure",
                    xlim=(0, 255), ylim=(0, 1.02))
        for axes in (pr_axes, fm_axes):
            axes.grid(True, alpha=0.3)
            axes.legend(loc="lower left", fontsize="small")
        path = Path(plot_dir) / f"{_file_stem(dataset)}.png"
        with atomic_path(path) as tmp:
            figure.savefig(tmp, format="png", dpi=110)
        written.append(path)
    return written
