"""``isnet build``."""

from __future__ import annotations

import argparse
from functools import partial


class BuildCommand:
    """Compile a model to an fp32 / fp16 / int8 artifact from a YAML build config.

    The config keeps the reference recipe's layout (name, frontend, backend, dataset,
    workspace); see build_in/configs/ for examples. The artifact folder <workspace>/<name>/
    holds the compiled model and build.json (pre-processing, hashes, fidelity vs fp32).
    """

    name = "build"

    def add_args(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("config", help="build config (YAML)")
        parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                            help="override a config key, e.g. --set backend.dtype=fp16 (repeatable)")
        parser.add_argument("--force", action="store_true", help="replace an existing artifact of the same name")

    def run(self, args: argparse.Namespace) -> int:
        from isnet.build_in import build_artifact, load_build_config
        from isnet.build_in.budget import describe_budget
        from isnet.core.memory import return_freed_memory
        from isnet.eval import selection_scores
        from isnet.tools.progress import StageBars

        config = load_build_config(args.config, args.overrides)
        return_freed_memory()  # a build's peak is what limits it (isnet.core.memory)
        with StageBars(prefix=f"{config.name}: ") as bars:
            result = build_artifact(config, force=args.force, progress=bars, scorer=partial(selection_scores, smeasure=True))
        info = result.info
        fidelity = info["fidelity"]
        size_mb = sum((result.artifact_dir / name).stat().st_size for name in info["artifact_sha256"]) / 1e6
        calibration = info["calibration"]
        detail = f", calibration: {calibration['mode']} on {len(calibration['images'])} images" if calibration else ""
        print(f"built {result.artifact_dir} ({info['backend']} {info['precision']}, {size_mb:.1f} MB, "
              f"{info['build_seconds']:.1f} s{detail})")
        for note in info["source"]["notes"]:
            print(f"source: {note}")
        print(f"fidelity vs fp32 on {len(fidelity['images'])} {fidelity['source']}: "
              f"mean |diff| {fidelity['mean_abs_diff']:.2e}, max |diff| {fidelity['max_abs_diff']:.2e}")
        details = info.get("backend_details") or {}
        plan = details.get("plan") or {}
        if plan.get("outlier_nodes_in_float"):
            widest = plan["outlier_tensors"][0]
            print(f"kept {len(plan['outlier_nodes_in_float'])} nodes in float around "
                  f"{plan['outlier_count']} tensors with an outlier channel (widest: "
                  f"{widest['ratio']:.1f}x the median channel; backend.quantize.outlier_channel_ratio)")
        if plan.get("outlier_nodes_back_in_int8"):
            print(f"the budget holds with the {len(plan['outlier_nodes_back_in_int8'])} nodes around "
                  f"{plan['outlier_count']} outlier-channel tensors in int8: the search put them back")
        if plan.get("budget"):
            print(describe_budget(plan["budget"], info["backend"]))
        if details.get("sixteen_bit_tensors"):
            form = "integer-only: every Conv reads int8/int16; " if plan.get("form") == "integer-only" else ""
            print(f"{form}{len(details['sixteen_bit_tensors'])} activations in 16 bits "
                  "(build.json: backend_details.sixteen_bit_tensors)")
        if fidelity.get("warning"):
            print(f"warning: {config.name}: {fidelity['warning']}")
        return 0
