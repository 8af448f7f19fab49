"""The one exception type a user sees: what went wrong and how to fix it, no traceback."""

from __future__ import annotations

import sys


class AdaInferError(Exception):
    """A user-facing error: bad input or a missing resource.

    ``run.py`` prints ``str(err)`` and exits with status 2; library callers can catch it.
    The message names the problem and the next step.
    """

    def __init__(self, problem: str, fix: str | None = None) -> None:
        self.problem = problem
        self.fix = fix
        super().__init__(problem if fix is None else f"{problem}\nFix: {fix}")


def fail(err: AdaInferError) -> None:
    """Print ``err`` as adainfer's one-message error and exit with status 2."""
    print(f"adainfer: error: {err}", file=sys.stderr)
    sys.exit(2)
