"""Cache files with the permissions a user expects.

``tempfile.mkstemp`` creates files 0600 and ``mkdtemp`` folders 0700, whatever the umask, so a
cache written through them (traces, converted models, tuned lenses) could not be read by the
group sharing it. What the caches publish gets the modes a plain ``open`` / ``mkdir`` would
give instead: 0666 and 0777 less the process umask.

:func:`exclusive` is the lock that lets several jobs (processes, on one machine or on several
sharing the folder) fill one cache without computing the same entry twice.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)

_lock = threading.Lock()
LOCKS = ".locks"  # the folder of a cache's lock files (empty files, left in place)


def cache_root() -> Path:
    """``$ADAINFER_CACHE_DIR`` or ``~/.cache/adainfer``."""
    root = os.environ.get("ADAINFER_CACHE_DIR")
    return Path(root) if root else Path.home() / ".cache" / "adainfer"


def current_umask() -> int:
    """The process umask, read without changing it where Linux allows (else set and restored)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    with _lock:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def share(path: Path) -> None:
    """Give ``path`` (a file or a folder, and all it holds) the modes the umask allows."""
    mask = current_umask()
    file_mode, dir_mode = 0o666 & ~mask, 0o777 & ~mask
    path = Path(path)
    if not path.is_dir():
        os.chmod(path, file_mode)
        return
    os.chmod(path, dir_mode)
    for parent, dirs, files in os.walk(path):
        for names, mode in ((dirs, dir_mode), (files, file_mode)):
            for name in names:
                child = os.path.join(parent, name)
                if not os.path.islink(child):  # a link's target is not ours to change
                    os.chmod(child, mode)


def cannot_write(folder: Path) -> str | None:
    """Why files cannot be created in ``folder`` (made if missing), or None when they can.

    Tries for real (a temporary file, removed again) rather than reading permission bits, which
    root ignores and which say nothing about read-only mounts or full quotas.
    """
    import tempfile

    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".write-check-", dir=folder)
        os.close(fd)
        os.unlink(tmp)
    except OSError as err:
        return f"{type(err).__name__}: {err.strerror or err}"
    return None


def _open_lock_file(path: Path) -> int | None:
    """A descriptor of ``path`` to lock (created with the modes the umask allows; read-only
    when another user's file cannot be opened for writing), or None when it cannot be had."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o666)  # os.open applies the umask
    except PermissionError:
        try:
            return os.open(path, os.O_RDONLY)  # flock needs no write access
        except OSError:
            return None
    except OSError:
        return None


@contextmanager
def exclusive(path: Path, what: str) -> Iterator[bool]:
    """Hold an exclusive ``flock`` on the file ``path`` for the body; yields whether it is held.

    One job at a time computes ``what``: the others wait here, then find it stored. The lock
    belongs to the open file: the kernel drops it when the holder closes it or dies, however it
    dies (kill -9 included), so a dead job never blocks the next one; the lock file itself is
    left in place (removing it would race with a job about to lock it). Where no lock can be
    had (a read-only cache, a file system without ``flock``, no ``fcntl``), the body runs
    unlocked with a warning: correct, as every cache write is atomic, at worst computed twice.
    """
    try:
        import fcntl
    except ImportError:  # Windows
        fcntl = None
    fd = _open_lock_file(Path(path)) if fcntl is not None else None
    if fd is None:
        yield False
        return
    try:
        held = True
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another job computing %s (it holds the lock %s)", what, path)
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as err:  # e.g. ENOLCK / EOPNOTSUPP on a file system without flock
            log.warning(
                "cannot lock %s (%s): another job may compute %s at the same time", path, err, what
            )
            held = False
        yield held
    finally:
        os.close(fd)  # releases the lock
