"""Cache files with the permissions a user expects.

``tempfile.mkstemp`` creates files 0600 and ``mkdtemp`` folders 0700, whatever the umask, so a
cache written through them (traces, converted models, tuned lenses) could not be read by the
group sharing it. What the caches publish gets the modes a plain ``open`` / ``mkdir`` would
give instead: 0666 and 0777 less the process umask.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

_lock = threading.Lock()


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
