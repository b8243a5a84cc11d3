"""runtime: running built artifacts (and reference models) over real data, and measuring them.

- :func:`load_model` opens an artifact folder, a ``.onnx``, a TorchScript file or a ``.pth``
  checkpoint as a :class:`LoadedModel` (runner + pre-processing).
- :func:`run_folder` is the streaming pipeline behind ``isnet run``.
- :func:`npz_from_images`, :func:`run_npz`, :func:`png_from_npz` and :func:`compare_npz` are the
  npz tools for bit-level checks.
- :func:`profile_model` / :func:`profile_models` measure throughput and latency (``isnet profile``).
- :func:`synthetic_photo` / :func:`write_synthetic_photos` make deterministic test images.

torch is imported only when a ``.pt``/``.pth`` model is loaded.
"""

from isnet.runtime.models import LoadedModel, ModelKind, load_model, model_kind
from isnet.runtime.npz import NpzComparison, compare_npz, npz_from_images, png_from_npz, run_npz
from isnet.runtime.profiler import (LatencyStats, Measurement, ProfileRecord, format_table, host_info, profile_model,
                                    profile_models)
from isnet.runtime.stream import FAILURES_FILE, StreamResult, run_folder
from isnet.runtime.synthetic import synthetic_photo, write_synthetic_photos

__all__ = [
    "FAILURES_FILE", "LatencyStats", "LoadedModel", "Measurement", "ModelKind", "NpzComparison",
    "ProfileRecord", "StreamResult", "compare_npz", "format_table", "host_info", "load_model", "model_kind",
    "npz_from_images", "png_from_npz", "profile_model", "profile_models", "run_folder", "run_npz",
    "synthetic_photo", "write_synthetic_photos",
]
