"""The server's limits and batching (``isnet serve``'s options; defaults in :mod:`isnet.core.defaults`)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from isnet.core import IsnetError, defaults


@dataclass(frozen=True)
class ServeSettings:
    """The server's limits and batching (``isnet serve``'s options)."""

    max_batch: int = defaults.SERVE_MAX_BATCH
    max_wait_ms: float = defaults.SERVE_MAX_WAIT_MS
    max_queue: int = defaults.SERVE_MAX_QUEUE
    max_body_mb: float = defaults.SERVE_MAX_BODY_MB
    max_pixels: int = defaults.SERVE_MAX_PIXELS
    body_timeout: float = defaults.SERVE_BODY_TIMEOUT  # seconds to receive a whole body
    threads: int | None = None  # inference threads (None: the runtime's default, every core)

    def __post_init__(self):
        for name in ("max_batch", "max_queue", "max_pixels"):
            if getattr(self, name) < 1:
                raise IsnetError(f"{name} must be at least 1, got {getattr(self, name)}")
        finite = all(math.isfinite(value) for value in (self.max_wait_ms, self.max_body_mb, self.body_timeout))
        if not finite or self.max_wait_ms < 0 or self.max_body_mb <= 0 or self.body_timeout <= 0:
            raise IsnetError("max_wait_ms must be a number >= 0, max_body_mb and body_timeout numbers > 0")

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)
