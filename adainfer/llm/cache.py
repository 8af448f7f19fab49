"""On-disk cache of GGUF models converted to safetensors.

Converting (de-quantizing) a GGUF file with transformers takes tens of seconds; the converted
weights and tokenizer are saved once per GGUF file, keyed by the file's SHA-256, so the next
load is a plain ``from_pretrained`` of a local folder. Writes are atomic: a folder is only
visible under its final name once everything in it is written.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from adainfer.files import cache_root, share

_COMPLETE = ".complete"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def converted_dir(key: str) -> Path | None:
    """The finished cache folder for ``key``, or None if there is none (or it is partial)."""
    folder = cache_root() / "converted" / key
    return folder if (folder / _COMPLETE).exists() else None


def publish_folder(
    target: Path, write: Callable[[Path], None], keep: Callable[[Path], bool] | None = None
) -> None:
    """Fill a folder with ``write(folder)`` under a temporary name beside ``target``, then
    rename it into place, so no reader sees it half-written; a crash leaves only the
    temporary folder's name. Unless ``keep(target)`` says the one there is to stay (another
    process finished first), the new folder replaces it. What it publishes gets the modes the
    umask allows (:func:`adainfer.files.share`), not ``mkdtemp``'s owner-only 0700."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        write(tmp)
        share(tmp)
        if keep is None or not keep(target):
            shutil.rmtree(target, ignore_errors=True)  # e.g. a partial folder left by a crash
            os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def store_converted(key: str, model, tokenizer) -> Path:
    """Save a de-quantized model and its tokenizer under ``key``; returns the folder."""
    target = cache_root() / "converted" / key

    def write(folder: Path) -> None:
        # The GGUF quantizer marks the model as not serializable; the weights are already
        # de-quantized floats, so dropping the marker saves them as they are.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        (folder / _COMPLETE).write_text("ok\n")

    publish_folder(target, write, keep=lambda path: (path / _COMPLETE).exists())
    return target
