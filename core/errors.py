"""The project's error type for user mistakes.

Every stage raises :class:`IsnetError` for problems the user can fix (a missing file, a bad
config key, a wrong npz shape). The ``isnet`` command prints its message on one line and exits
with code 2; any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


# Exit codes of the ``isnet`` command: 0 done; 1 a bug (its traceback is printed); 2 the user's mistake
# (one line); 3 the job finished and wrote its results, but some fail its checks (images that could not
# be read, a build past the drift gate, files that differ): scripts can tell that from a crash.
EXIT_BUG = 1
EXIT_USER_ERROR = 2
EXIT_CHECKS_FAILED = 3


class IsnetError(Exception):
    """A user mistake: the message says what is wrong and what to do instead."""


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """Return ``" (did you mean 'x'?)"`` for the closest of ``choices``, or ``""``."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (its type name when it has none), cut at ``limit``.

    Libraries' messages run to paragraphs; a one-line error quotes this much of them.
    """
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:limit]
