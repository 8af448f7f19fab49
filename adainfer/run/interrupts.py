"""SIGTERM and SIGINT end a job promptly and say so, even in the middle of an LLM pass.

``timeout``, SLURM and Ray stop a job with SIGTERM; a user with Ctrl+C (SIGINT). Python's
default handler for SIGTERM dies without cleanup (the MLflow run stays RUNNING), and inside
``Trainer.predict`` Lightning installs its own SIGTERM handler that only logs the signal and turns
SIGINT's KeyboardInterrupt into ``sys.exit(1)``. While :func:`ending_on_signals` is active, either
signal raises :class:`Interrupted` in the main thread instead. Lightning keeps a handler that was
already installed and calls it after its own, and re-raises any exception that is not a
KeyboardInterrupt, so the exception reaches the caller, which closes its MLflow runs as KILLED
(:func:`adainfer.run.tracking.tracked_run`) and exits with ``128 + signum`` (143, 130).

A second signal while the first one is being handled exits at once, without cleanup: the run it
leaves RUNNING is closed by the next job on the same experiment
(:func:`adainfer.run.tracking.open_store`).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Interrupted(BaseException):
    """A signal asked the job to end. A BaseException, so ``except Exception`` lets it pass."""

    def __init__(self, signum: int) -> None:
        self.signum = int(signum)
        self.reason = signal.Signals(signum).name  # "SIGTERM", "SIGINT"
        super().__init__(f"received {self.reason}")

    @property
    def exit_status(self) -> int:
        """The shell's convention for a job ended by a signal: 128 + its number."""
        return 128 + self.signum


@contextmanager
def ending_on_signals(signals: tuple[int, ...] = SIGNALS) -> Iterator[None]:
    """While active, each of ``signals`` raises :class:`Interrupted`; the previous handlers come
    back on exit. Does nothing outside the main thread (Python delivers signals only there)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def handler(signum: int, frame) -> None:
        if received:  # already ending: a second signal means now
            print(
                f"adainfer: {signal.Signals(signum).name} again: exiting without cleanup",
                file=sys.stderr,
                flush=True,
            )
            os._exit(128 + signum)
        received.append(signum)
        raise Interrupted(signum)

    previous = {signum: signal.getsignal(signum) for signum in signals}
    for signum in signals:
        signal.signal(signum, handler)
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old if old is not None else signal.SIG_DFL)
