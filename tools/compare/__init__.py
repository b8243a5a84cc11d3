"""``isnet compare``: build every precision of one model, run, evaluate and profile each build,
and write one report that puts accuracy, drift from the reference and speed side by side.

- :mod:`~isnet.tools.compare.experiment` -- the experiment file: a typed, validated config;
- :mod:`~isnet.tools.compare.cache` -- the per-stage manifests that let a rerun reuse what did not change;
- :mod:`~isnet.tools.compare.stages` -- export, build, run, evaluate, profile and drift;
- :mod:`~isnet.tools.compare.report` -- the table, the gate and the report files.
"""

from isnet.tools.compare.experiment import PRESETS, BuildEntry, Experiment, load_experiment, read_experiment
from isnet.tools.compare.report import BuildReport, gate, recommend, table_rows
from isnet.tools.compare.stages import CompareResult, run_experiment

__all__ = ["PRESETS", "BuildEntry", "BuildReport", "CompareResult", "Experiment", "gate", "load_experiment",
           "read_experiment", "recommend", "run_experiment", "table_rows"]
