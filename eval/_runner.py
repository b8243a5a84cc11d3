"""Scoring planned tasks from files, in one process or several, with identical results.

Workers only measure: each returns the per-image records of a chunk of pairs, and the parent adds
them to the dataset accumulators in name order. The numbers therefore do not depend on the number
of workers or on how the pairs were chunked.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence

from isnet.eval._evaluator import METRIC_NAMES, EvalResult, SaliencyEvaluator, check_metric_names
from isnet.eval._inputs import EvalTask, plan_from_folders, plan_from_json, read_pair

# progress(stage, advance, total), as the command layer's progress bars take it.
Progress = Callable[[str, int, int], None]

Results = dict[str, dict[str, EvalResult]]


def _pool_context():
    """Forked workers on Linux (cheap, and no ``if __name__ == "__main__"`` needed), else spawned.

    Workers leave OpenCV's thread settings alone: ``cv2.setNumThreads`` in a forked child can
    deadlock on the thread pool copied from the parent, while OpenCV's own calls are fork-safe.
    """
    return multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")


def _measure_chunk(job: tuple[tuple[str, ...], Sequence[tuple[str, os.PathLike, os.PathLike]]]) -> list:
    """Per-image (records, resized) of a chunk of (name, prediction, GT) triples."""
    metric_names, pairs = job
    evaluator = SaliencyEvaluator(metric_names)
    measured = []
    for _name, pred_path, gt_path in pairs:
        pred, gt, resized = read_pair(pred_path, gt_path)
        measured.append((evaluator._measure(pred, gt), resized))
    return measured


def _chunks(tasks: Sequence[EvalTask], num_workers: int) -> Iterator[tuple[int, tuple]]:
    for index, task in enumerate(tasks):
        n = len(task.pairs)
        # One image at a time in-process (the progress bar moves per image); small chunks for workers.
        size = 1 if num_workers == 1 else max(1, min(32, math.ceil(n / (4 * num_workers))))
        for start in range(0, n, size):
            yield index, task.pairs[start:start + size]


def evaluate_tasks(tasks: Sequence[EvalTask], *, metric_names: Iterable[str] = METRIC_NAMES,
                   num_workers: int = 1, progress: Progress | None = None) -> Results:
    """Score every task; returns ``{dataset: {method: EvalResult}}`` in task order.

    ``num_workers`` > 1 spreads the images over that many processes (same numbers as one).
    ``progress(stage, advance, total)`` is called as images are scored, with ``"<dataset> | <method>"``
    as the stage. A file that cannot be read stops everything with an :class:`IsnetError` naming it.
    """
    names = check_metric_names(metric_names)
    if num_workers < 1:
        raise ValueError(f"num_workers must be >= 1, got {num_workers}")
    evaluators = [SaliencyEvaluator(names) for _ in tasks]
    resized: list[list[str]] = [[] for _ in tasks]
    jobs = list(_chunks(tasks, num_workers))
    pool = None
    if num_workers > 1 and len(jobs) > 1:
        pool = _pool_context().Pool(min(num_workers, len(jobs)))
        measured = pool.imap(_measure_chunk, ((names, pairs) for _, pairs in jobs))
    else:
        measured = map(_measure_chunk, ((names, pairs) for _, pairs in jobs))
    try:
        for (index, pairs), records in zip(jobs, measured):
            for (name, _, _), (record, was_resized) in zip(pairs, records):
                evaluators[index]._add(record)
                if was_resized:
                    resized[index].append(name)
            if progress is not None:
                progress(f"{tasks[index].dataset} | {tasks[index].method}", len(pairs), len(tasks[index].pairs))
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
    results: Results = {}
    for task, evaluator, names_resized in zip(tasks, evaluators, resized):
        result = evaluator.results()
        results.setdefault(task.dataset, {})[task.method] = EvalResult(
            metrics=result.metrics, curves=result.curves, num_images=result.num_images,
            missing=task.missing, resized=tuple(names_resized),
            picture_mae=dict(zip((name for name, _, _ in task.pairs), evaluator.picture_mae())))
    return results


def evaluate_folders(pred_dir: str | os.PathLike, gt_dir: str | os.PathLike, names: Iterable[str] | None = None, *,
                     metric_names: Iterable[str] = METRIC_NAMES, allow_missing: bool = False,
                     num_workers: int = 1, progress: Progress | None = None) -> EvalResult:
    """Score a folder of predictions against a folder of GT masks, paired by file stem.

    ``names`` restricts the evaluation to those GT names. Returns the :class:`EvalResult` with the
    metrics dict and the PR / F-measure (and E-measure) curves. Missing predictions raise an
    :class:`IsnetError` unless ``allow_missing``; predictions of another size are resized to the
    GT bilinearly (listed in ``result.resized``).
    """
    task = plan_from_folders(pred_dir, gt_dir, names=names, allow_missing=allow_missing)
    results = evaluate_tasks([task], metric_names=metric_names, num_workers=num_workers, progress=progress)
    return results[task.dataset][task.method]


def evaluate_json(dataset_json: str | os.PathLike, method_jsons: Sequence[str | os.PathLike], *,
                  include_datasets: Sequence[str] | None = None, include_methods: Sequence[str] | None = None,
                  metric_names: Iterable[str] = METRIC_NAMES, allow_missing: bool = False,
                  num_workers: int = 1, progress: Progress | None = None) -> Results:
    """Score the methods of PySODEvalToolkit method JSONs on the datasets of a dataset JSON."""
    tasks = plan_from_json(dataset_json, method_jsons, include_datasets=include_datasets,
                           include_methods=include_methods, allow_missing=allow_missing)
    return evaluate_tasks(tasks, metric_names=metric_names, num_workers=num_workers, progress=progress)

