"""The runner contract every backend implements: ``infer(inputs: dict) -> dict``."""

from __future__ import annotations

from typing import Protocol

import numpy as np


class Runner(Protocol):
    """A loaded model. ``infer`` maps input names to arrays and returns output names to arrays.

    ISNet runners take ``{"input": float32 N x 3 x H x W}`` and return
    ``{"output": float32 N x 1 x H x W}`` (the sigmoid map), whatever precision runs inside.
    """

    input_name: str
    output_name: str

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ...
