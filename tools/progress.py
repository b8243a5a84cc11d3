"""Progress bars for library callbacks: the library reports, the command layer draws."""

from __future__ import annotations


class StageBars:
    """A callable ``(stage, advance, total)`` that keeps one tqdm bar per stage name.

    ``advance == 0`` only announces a stage (a bar appears once there is a total > 1).
    Use as a context manager so bars are closed even when the work fails.
    """

    def __init__(self, prefix: str = "", unit: str = "img"):
        self.prefix = prefix
        self.unit = unit
        self._bars: dict = {}

    def __call__(self, stage: str, advance: int, total: int) -> None:
        from tqdm import tqdm

        if stage not in self._bars and total > 1:
            self._bars[stage] = tqdm(total=total, desc=f"{self.prefix}{stage}", unit=self.unit,
                                     dynamic_ncols=True, leave=False, disable=None)  # None: only on a terminal
        bar = self._bars.get(stage)
        if bar is not None and advance:
            bar.update(advance)
            if bar.n >= bar.total:
                # A finished stage gives its line back, so bars never pile up on screen.
                bar.close()
                self._bars[stage] = None

    def close(self) -> None:
        for bar in self._bars.values():
            if bar is not None:
                bar.close()
        self._bars.clear()

    def __enter__(self) -> "StageBars":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
