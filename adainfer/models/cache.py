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
from pathlib import Path

_COMPLETE = ".complete"


def cache_root() -> Path:
    """``$ADAINFER_CACHE_DIR`` or ``~/.cache/adainfer``."""
    root = os.environ.get("ADAINFER_CACHE_DIR")
    return Path(root) if root else Path.home() / ".cache" / "adainfer"


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


def store_converted(key: str, model, tokenizer) -> Path:
    """Save a de-quantized model and its tokenizer under ``key``; returns the folder."""
    target = cache_root() / "converted" / key
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=target.parent))
    try:
        # The GGUF quantizer marks the model as not serializable; the weights are already
        # de-quantized floats, so dropping the marker saves them as they are.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / _COMPLETE).write_text("ok\n")
        if converted_dir(key) is None:  # another process may have finished first
            if target.exists():  # a partial folder left by a crash
                shutil.rmtree(target)
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target
