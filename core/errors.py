"""The project's error type for user mistakes.

Every stage raises :class:`IsnetError` for problems the user can fix (a missing file, a bad
config key, a wrong npz shape). The ``isnet`` command prints its message on one line and exits
with code 2; any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class IsnetError(Exception):
    """A user mistake: the message says what is wrong and what to do instead."""


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """Return ``" (did you mean 'x'?)"`` for the closest of ``choices``, or ``""``."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""
