"""core: what every stage of the pipeline shares, and nothing else.

- :class:`IsnetError` -- the error type for user mistakes (the ``isnet`` command prints its message
  on one line and exits 2), and :func:`did_you_mean` for its suggestions;
- atomic writes (:func:`atomic_path`, :func:`atomic_dir`, :func:`write_bytes_atomic`,
  :func:`write_text_atomic`) so nothing half-written is ever left under a final name;
- :func:`sha256_file` and :func:`digest_of`, the hashes artifacts and caches are keyed by;
- typed config loading (:func:`load_dataclass`, :func:`apply_overrides`, :func:`read_yaml_mapping`):
  YAML into frozen dataclasses, unknown keys refused with a suggestion.

It imports nothing from the stages, so every stage can import it.
"""

from isnet.core.errors import EXIT_CHECKS_FAILED, IsnetError, did_you_mean, first_line
from isnet.core.files import atomic_dir, atomic_path, atomic_temp_target, digest_of, sha256_file, write_bytes_atomic, write_text_atomic
from isnet.core.typed_config import (apply_overrides, bounded, internal, load_dataclass, read_yaml_mapping, resolve_path,
                                     to_plain)

__all__ = [
    "EXIT_CHECKS_FAILED", "IsnetError", "apply_overrides", "atomic_dir", "atomic_path", "atomic_temp_target", "bounded", "did_you_mean", "digest_of",
    "first_line", "internal", "load_dataclass", "read_yaml_mapping", "resolve_path", "sha256_file", "to_plain", "write_bytes_atomic",
    "write_text_atomic",
]
