"""build_in: YAML build configs, the pre-processing ops registry, calibration and compile backends.

Public surface: config loading (:func:`load_build_config`), :func:`build_artifact`, opening an
artifact as a :class:`LoadedModel` (:func:`open_artifact`; runners in :mod:`isnet.build_in.runners`), the ops registry (:class:`Preprocessor`) and image decoding.
"""

from isnet.build_in.artifact import LoadedModel, ModelKind, is_artifact, open_artifact, read_build_info
from isnet.build_in.builder import BuildResult, build_artifact
from isnet.build_in.config import (BackendType, BuildConfig, CalibrationMode, Precision, load_build_config,
                                   validate_build_config)
from isnet.build_in.imageio import ImageDecodeError, decode_image, decode_mask, list_images
from isnet.build_in.ops import DEFAULT_OPS, Geometry, Preprocessor, default_process_ops, map_to_uint8, mask_from_output

__all__ = [
    "BackendType", "BuildConfig", "BuildResult", "CalibrationMode", "DEFAULT_OPS", "Geometry", "ImageDecodeError",
    "LoadedModel", "ModelKind", "Precision", "Preprocessor", "build_artifact", "decode_image", "decode_mask",
    "default_process_ops", "is_artifact", "list_images", "load_build_config", "map_to_uint8", "mask_from_output",
    "open_artifact", "read_build_info", "validate_build_config",
]
