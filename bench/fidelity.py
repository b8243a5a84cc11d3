"""Does a faster build keep the fp32 answers? Every int8 calibration mode on real weights, against fp32.

    python bench/fidelity.py                                   # pretrained U^2-Netp
    python bench/fidelity.py --model export/weights/isnet-demo.pth --images 50
    python bench/fidelity.py --builds fp32,int8_max,int8_max_no_fallback

ECSSD split: calibration on pictures 0001-0050, validation of the budgeted ``int8_auto`` build on
0051-0100, evaluation on 0101-0500 (the demo checkpoint, distilled on 0001-0450, is evaluated on
0451-0500 only).
Each build goes through ``isnet compare`` (so the numbers are the ones a user sees): MAE,
S-measure and max F of every build and their change from fp32 (dMAE, dSm, dmaxF), the mean
|difference| of the raw maps from fp32's, images/s and the build time. ``*_no_fallback`` builds
quantize the tensors with an outlier channel too (``outlier_channel_ratio: null``), as every
build did before the fallback; ``*_bias_corrected`` builds add ``bias_correction: true``,
``*_equalized`` builds ``equalize: true``; suffixes combine (``int8_max_equalized_bias_corrected``).
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
from pathlib import Path

from _common import ECSSD, DEMO_HELD_OUT_FROM, DEMO_WEIGHTS, markdown, split_ecssd
from pretrained import fetch_u2netp

BUILDS = ("fp32,int8_auto,int8_max,int8_max_bias_corrected,int8_max_no_fallback,int8_kl,int8_percentile,int8_mse,"
          "ov_int8_max")
# Name suffixes: settings added to the preset named before them.
VARIANTS = {"_no_fallback": {"outlier_channel_ratio": None}, "_bias_corrected": {"bias_correction": True},
            "_equalized": {"equalize": True}}
# The goal for a budgeted build, and the budget int8_auto gets (validated on 0051-0100).
BUDGET = {"mae": 0.0005, "sm": 0.001, "maxfmeasure": 0.002}


def _builds(names: list[str]) -> dict:
    from isnet.tools.compare import PRESETS

    builds = {}
    for name in names:
        preset, settings = name, {}
        while suffix := next((s for s in VARIANTS if preset.endswith(s)), ""):
            preset, settings = preset.removesuffix(suffix), {**VARIANTS[suffix], **settings}
        if preset not in PRESETS:
            raise SystemExit(f"bench/fidelity.py: unknown build {name}; presets: {', '.join(PRESETS)}")
        spec = {key: dict(value) if isinstance(value, dict) else value for key, value in PRESETS[preset].items()}
        if settings:
            spec["backend"] = {**spec["backend"], "quantize": {**spec["backend"].get("quantize", {}), **settings}}
        builds[name] = spec
    return builds


def _float_nodes(info: dict) -> int:
    """Nodes an int8 build left in float by itself: around outlier channels, and for its budget."""
    plan = (info.get("backend_details") or {}).get("plan") or {}
    return len(plan.get("outlier_nodes_in_float", [])) + len((plan.get("budget") or {}).get("float_nodes", []))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="ONNX or .pth (default: the pretrained U^2-Netp)")
    parser.add_argument("--builds", default=BUILDS, help=f"comma-separated (default {BUILDS})")
    parser.add_argument("--images", type=int, default=None, help="evaluate on the first N of the evaluation pictures")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "isnet-bench-fidelity")
    args = parser.parse_args()
    from isnet.runtime import host_info
    from isnet.tools.compare import load_experiment, run_experiment

    if not (ECSSD / "image").is_dir():
        print(f"bench/fidelity.py: ECSSD not found at {ECSSD}", file=sys.stderr)
        return 2
    model = args.model.resolve() if args.model else fetch_u2netp()
    demo = model == DEMO_WEIGHTS.resolve()
    calib, evaluation = split_ecssd(args.work, evaluate_from=DEMO_HELD_OUT_FROM if demo else 100, count=args.images)
    names = [n.strip() for n in args.builds.split(",") if n.strip()]
    spec = {"name": "fidelity", "model": str(model), "dataset": {"path": str(evaluation)},
            "calibration": {"path": str(calib), "count": 50}, "builds": _builds(names), "reference": names[0],
            "run": {"drift_images": 10_000}, "profile": {"seconds": 3}, "max_delta": BUDGET,
            "report": {"path": str(args.work / "report"), "strip_images": 4}}
    if model.suffix == ".onnx":
        spec["process_ops"] = "u2net"
    else:
        spec["input_size"] = [320, 320]
    result = run_experiment(load_experiment(spec, "bench/fidelity.py", args.work))

    reports = {r.name: r for r in result.reports}
    base = reports[names[0]]
    rows = []
    failed = {f.name: f.reason for f in result.failures}
    for name in names:
        if name in failed:  # a budget it cannot meet: isnet compare reports it, and so does this table
            rows.append([name, *["-"] * 9, f"FAILED: {failed[name]}"])
            continue
        r = reports[name]
        m = r.metrics
        rows.append([name, f"{m['mae']:.4f}", f"{m['mae'] - base.metrics['mae']:+.4f}", f"{m['sm']:.4f}",
                     f"{m['sm'] - base.metrics['sm']:+.4f}", f"{m['maxfmeasure']:.4f}",
                     f"{m['maxfmeasure'] - base.metrics['maxfmeasure']:+.4f}",
                     "-" if r.drift_mean_abs is None else f"{r.drift_mean_abs:.4f}", f"{r.throughput_ips:.1f}",
                     f"{r.info.get('build_seconds', 0):.0f}",
                     str(_float_nodes(r.info))])
    host = host_info()
    count = len(list((evaluation / "image").iterdir()))
    print(f"\n{model.name} on {count} ECSSD pictures, calibrated on 0001-0050; {host['cpu']}, "
          f"{host['logical_cores']} threads, Python {platform.python_version()}")
    print(markdown(["build", "MAE", "dMAE", "Sm", "dSm", "maxF", "dmaxF", f"mean |d| vs {names[0]}", "images/s",
                    "build s", "float nodes"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
