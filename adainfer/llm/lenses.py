"""What reads an intermediate layer: the plain logit lens, or a tuned lens of per-layer translators.

The logit lens decodes layer l's hidden state with the model's own final norm and LM head,
``P_l = softmax(W · norm(h_l))``. A small model's middle layers are not written in the final
layer's basis, so this reads them badly (Belrose et al., 2023, "Eliciting Latent Predictions
from Transformers with the Tuned Lens", arXiv:2303.08112). The tuned lens puts an affine
*translator* in front of the same head, ``P_l = softmax(W · norm(A_l h_l + b_l))``, fitted so
that ``A_l h_l + b_l`` approximates the last layer's hidden state ``h_L`` at the same position.
The LLM stays frozen: only the translators are learnt.

Here the translators are fitted in closed form, by ridge regression over every token position
of the train prompts (the first position, whose hidden state is an attention-sink outlier in
many models, and padding are left out), shrunk towards the identity::

    A_l = (C_xx + λ I)^-1 (C_xy + λ I),   b_l = mean(h_L) − mean(h_l) A_l,
    λ = ridge · trace(C_xx) / h

with ``C`` the centred second moments. ``A_l = I, b_l = 0`` is exactly the logit lens, and the
last layer's translator is fixed to it, so the full model's answer never changes.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader

from adainfer.errors import AdaInferError
from adainfer.files import LOCKS, cannot_write, exclusive
from adainfer.llm.batching import LLMPass, length_sorted_loader, one_device, probe_trainer
from adainfer.llm.cache import publish_folder
from adainfer.llm.capture import Hooks
from adainfer.llm.encoding import EncodedPrompts
from adainfer.llm.placement import dispatched

log = logging.getLogger(__name__)


class Lens:
    """What reads an intermediate layer: each layer's hidden state translated into the last
    layer's basis, then decoded by the model's own final norm and LM head.

    Subclasses register by ``name`` (a config's ``probe.name``, a saved ``probe.json``'s
    ``probe``), so a new lens is one class: :meth:`translate`, :meth:`flops` (its price per read,
    which honest FLOPs charge), :attr:`fingerprint` (what trace keys record: equal fingerprints
    give equal features) and, when it has parameters, :meth:`save` and :meth:`_load`; its name
    goes into ``adainfer.choices.PROBES`` for the config checks, and
    ``adainfer.extract.extractor.Extractor.probe`` builds it.
    """

    name: ClassVar[str]
    registry: ClassVar[dict[str, type[Lens]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:
            Lens.registry[cls.name] = cls

    def translate(self, hidden: torch.Tensor, layer: int | None = None) -> torch.Tensor:
        """``hidden`` [..., L, h] (all layers) or, with ``layer`` (0-based), [..., h]."""
        raise NotImplementedError

    @property
    def fingerprint(self) -> str:
        """What trace keys record: equal fingerprints give equal features."""
        return self.name

    def flops(self) -> float:
        """FLOPs of translating one position at one layer."""
        return 0.0

    def save(self, folder: Path) -> None:
        """Write ``probe.json`` (and the parameters) into ``folder``; a folder without
        ``probe.json`` loads as the logit lens."""

    @classmethod
    def _load(cls, folder: Path, meta: dict[str, Any]) -> Lens:
        """Read back what :meth:`save` wrote (``meta``: its ``probe.json``)."""
        return cls()


class LogitLens(Lens):
    """The paper's probe: the final norm and LM head applied to the raw hidden state."""

    name = "logit_lens"

    def translate(self, hidden: torch.Tensor, layer: int | None = None) -> torch.Tensor:
        return hidden


@dataclass
class TunedLens(Lens):
    """Per-layer affine translators: ``h ↦ h · weight[l] + bias[l]`` before the LM head.

    Saved with the model it was fitted on (``base_model``: its identity; ``unembedding``: a
    hash of its LM head's weights), as tuned-lens does, so a lens is never read through another
    model's head (:func:`check_probe`)."""

    weight: torch.Tensor  # [L, h, h]; row vectors: out = h @ weight[l]
    bias: torch.Tensor  # [L, h]
    ridge: float | None = None  # how it was fitted (None: set by hand)
    positions: int = 0  # token positions it was fitted on
    base_model: str = ""  # identity of the model it was fitted on ("": not recorded)
    unembedding: str = ""  # sha256 of that model's LM head weights, 24 hex digits
    # (device, dtype) -> (weight, bias) there: each copy is made once, not once per call.
    _placed: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    name = "tuned"

    def __post_init__(self) -> None:
        if self.weight.dim() != 3 or self.weight.shape[1] != self.weight.shape[2]:
            raise AdaInferError(
                f"tuned lens weight has shape {tuple(self.weight.shape)}, not [layers, h, h]",
                "fit it with adainfer.llm.lenses.fit_tuned_lens",
            )
        if self.bias.shape != self.weight.shape[:2]:
            raise AdaInferError(
                f"tuned lens bias has shape {tuple(self.bias.shape)}, "
                f"not {tuple(self.weight.shape[:2])}",
                "fit it with adainfer.llm.lenses.fit_tuned_lens",
            )

    @property
    def num_layers(self) -> int:
        return self.weight.shape[0]

    @property
    def hidden_size(self) -> int:
        return self.weight.shape[1]

    @classmethod
    def identity(cls, num_layers: int, hidden_size: int) -> TunedLens:
        """Translators that change nothing: the logit lens, in tuned-lens form."""
        eye = torch.eye(hidden_size).expand(num_layers, -1, -1).clone()
        return cls(eye, torch.zeros(num_layers, hidden_size))

    def on(self, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(weight, bias) on ``device`` in ``dtype``, copied there on the first call only (the
        engine translates once per layer and batch; a 13B lens is 4 GB)."""
        key = (torch.device(device), dtype)
        placed = self._placed.get(key)
        if placed is None or placed[0] is not self.weight or placed[1] is not self.bias:
            moved = (self.weight.to(device, dtype), self.bias.to(device, dtype))
            placed = self._placed[key] = (self.weight, self.bias, *moved)
        return placed[2], placed[3]

    def translate(self, hidden: torch.Tensor, layer: int | None = None) -> torch.Tensor:
        """``hidden`` [..., L, h] (all layers) or, with ``layer`` (0-based), [..., h]."""
        weight, bias = self.on(hidden.device, hidden.dtype)
        if layer is None:
            return torch.einsum("...lh,lhk->...lk", hidden, weight) + bias
        if layer == self.num_layers - 1:
            return hidden  # fixed to the identity: the model's own answer
        return hidden @ weight[layer] + bias[layer]

    @property
    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for tensor in (self.weight, self.bias):
            digest.update(tensor.detach().float().contiguous().cpu().numpy().tobytes())
        return f"{self.name}:{digest.hexdigest()[:24]}"

    def flops(self) -> float:
        """One position at one layer: an h×h product and a bias add."""
        return 2.0 * self.hidden_size**2 + self.hidden_size

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        save_file(
            {"weight": self.weight.contiguous(), "bias": self.bias.contiguous()},
            str(folder / "probe.safetensors"),
        )
        meta = {"probe": self.name, "ridge": self.ridge, "positions": self.positions}
        meta |= {"base_model": self.base_model, "unembedding": self.unembedding}
        (folder / "probe.json").write_text(json.dumps(meta, indent=2))

    @classmethod
    def _load(cls, folder: Path, meta: dict[str, Any]) -> TunedLens:
        tensors = load_file(str(Path(folder) / "probe.safetensors"))
        recorded = (meta.get("base_model", ""), meta.get("unembedding", ""))  # older files: none
        return cls(tensors["weight"], tensors["bias"], meta["ridge"], meta["positions"], *recorded)


Probe = Lens  # the name the config group (``probe=``) gives a lens


def load_probe(folder: Path) -> Lens:
    """The lens saved beside a policy (``probe.json``), else the logit lens."""
    meta_path = Path(folder) / "probe.json"
    if not meta_path.is_file():
        return LogitLens()
    meta = json.loads(meta_path.read_text())
    cls = Lens.registry.get(meta.get("probe"))
    if cls is None:
        known = sorted(Lens.registry)
        raise AdaInferError(f"unknown saved probe {meta.get('probe')!r}", f"known: {known}")
    return cls._load(Path(folder), meta)


def unembedding_hash(lm_head: torch.nn.Module) -> str:
    """sha256 of an LM head's weights (24 hex digits): which head a tuned lens was fitted
    before."""
    digest = hashlib.sha256()
    weight = lm_head.weight.detach()
    digest.update(str((tuple(weight.shape), str(weight.dtype))).encode())
    digest.update(weight.contiguous().cpu().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:24]


def check_probe(probe: Lens, num_layers: int, hidden_size: int, identity: str = "") -> None:
    """A tuned lens must have been fitted on a model of this depth and width, and (where both
    are recorded) on this very model (``identity``: the model's
    :attr:`~adainfer.llm.loading.LoadedModel.identity`)."""
    if not isinstance(probe, TunedLens):
        return
    if probe.num_layers != num_layers or probe.hidden_size != hidden_size:
        raise AdaInferError(
            f"the tuned lens has {probe.num_layers} layers of width {probe.hidden_size}, the "
            f"model {num_layers} of width {hidden_size}",
            "fit the tuned lens on this model (probe=tuned fits one on the train prompts)",
        )
    if identity and probe.base_model and probe.base_model != identity:
        raise AdaInferError(
            f"the tuned lens was fitted on the model {probe.base_model[:80]!r}, not on "
            f"{identity[:80]!r}",
            "fit the tuned lens on this model (probe=tuned fits one on the train prompts)",
        )


# -- fitting ----------------------------------------------------------------------------------
class _MomentsModule(LLMPass):
    """Accumulates, per layer, the moments a ridge fit of h_l → h_L needs (float64).

    Layer by layer, so a pass holds one [h, h] product at a time, not L of them. The sums stay
    on the model's device (no float64 round trip to the host per batch), except for a model
    spread over devices, whose GPUs have no room left for L × h × h float64 sums (43 GB at
    70B), and on MPS, which has no float64: there they are kept on the CPU.
    """

    def __init__(self, loaded: Any) -> None:
        super().__init__(loaded)
        self.count = 0
        self.sums: dict[str, list[torch.Tensor]] = {}

    def on_predict_start(self) -> None:
        super().on_predict_start()
        device = self.input_device
        if dispatched(self.loaded.model) or device.type == "mps":
            device = torch.device("cpu")
        self.sums_device = device

    def _add(self, name: str, layer: int, value: torch.Tensor) -> None:
        value = value.double().to(self.sums_device)
        sums = self.sums.setdefault(name, [])
        if layer == len(sums):
            sums.append(value)
        else:
            sums[layer] += value

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> int:
        ids, mask = self.inputs(batch)
        outputs: list[torch.Tensor] = []
        with Hooks() as hooks, torch.no_grad():
            for layer in self.parts.layers:
                hooks.on_output(layer, outputs.append)
            self.parts.backbone(input_ids=ids, attention_mask=mask, use_cache=False)
        keep_pos = mask.bool().clone()
        keep_pos[:, 0] = False  # the first position: an attention-sink outlier
        y = outputs[-1][keep_pos.to(outputs[-1].device)].float()  # [n, h]
        for layer, output in enumerate(outputs):
            x = output[keep_pos.to(output.device)].float()  # [n, h]
            y_here = y.to(x.device)
            self._add("x", layer, x.sum(dim=0))
            self._add("xx", layer, x.T @ x)
            self._add("xy", layer, x.T @ y_here)
        self._add("y", 0, y.sum(dim=0))
        self.count += y.shape[0]
        return y.shape[0]  # positions used (the moments stay on the module)

    def moments(self) -> dict[str, torch.Tensor]:
        """The sums, stacked over layers, on the CPU: x [L, h], y [h], xx and xy [L, h, h]."""
        out = {name: torch.stack(sums).cpu() for name, sums in self.sums.items()}
        out["y"] = out["y"][0]
        return out


def fit_tuned_lens(
    loaded: Any,
    encoded: EncodedPrompts,
    batch_size: int = 8,
    ridge: float = 0.1,
    trainer_kwargs: dict[str, Any] | None = None,
) -> TunedLens:
    """Closed-form ridge translators fitted on every position of ``encoded`` (the train prompts).

    ``loaded`` is a :class:`~adainfer.llm.loading.LoadedModel`. One forward pass per batch,
    run by a Lightning Trainer like the feature extraction, on the first of ``trainer.devices``.
    """
    if ridge < 0:
        raise AdaInferError(f"probe.ridge={ridge} is negative", "use a ridge of 0 or more")
    module = _MomentsModule(loaded)
    loader: DataLoader = length_sorted_loader(loaded, encoded, batch_size)
    # On one device even when trainer.devices asks for more: the sums stay on the module, which
    # a data-parallel worker would not hand back (see adainfer.llm.gather).
    trainer = probe_trainer(one_device(trainer_kwargs))
    trainer.predict(module, dataloaders=loader, return_predictions=False)
    n = module.count
    if n < 2:
        raise AdaInferError(
            f"the tuned lens needs token positions to fit on; the train prompts gave {n}",
            "use longer or more train prompts (task.n_train)",
        )
    s = module.moments()
    mean_x, mean_y = s["x"] / n, s["y"] / n  # [L, h], [h]
    cxx = s["xx"] - n * mean_x[:, :, None] * mean_x[:, None, :]
    cxy = s["xy"] - n * mean_x[:, :, None] * mean_y[None, None, :]
    layers, h = mean_x.shape
    eye = torch.eye(h, dtype=torch.float64)
    lam = ridge * torch.diagonal(cxx, dim1=1, dim2=2).sum(dim=1) / h  # [L]
    weight = torch.linalg.solve(cxx + lam[:, None, None] * eye, cxy + lam[:, None, None] * eye)
    bias = mean_y - torch.einsum("lh,lhk->lk", mean_x, weight)
    weight[-1], bias[-1] = eye, 0.0  # the last layer reads as the model does
    head = unembedding_hash(loaded.parts.lm_head)
    return TunedLens(weight.float(), bias.float(), ridge, n, loaded.identity, head)


class LensStore:
    """Fitted tuned lenses under ``root``, one folder per key (model identity, train-prompt
    digest, ridge, precision), so a sweep over classifiers fits each lens once.

    A folder is written under a temporary name and renamed into place; one whose key does not
    match, or that does not load, is refitted.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.read_only = False  # set by check_writable: read, never write

    def check_writable(self) -> str | None:
        """Why lenses cannot be stored here (the store then becomes ``read_only``), or None."""
        problem = cannot_write(self.root)
        self.read_only = problem is not None
        return problem

    def path(self, key: dict[str, Any]) -> Path:
        payload = json.dumps(key, sort_keys=True).encode()
        return self.root / hashlib.sha256(payload).hexdigest()[:32]

    def get(self, key: dict[str, Any]) -> TunedLens | None:
        """The stored lens, or None when absent or damaged."""
        folder = self.path(key)
        try:
            if json.loads((folder / "key.json").read_text()) == key:
                lens = load_probe(folder)
                if isinstance(lens, TunedLens):
                    return lens
        except (OSError, ValueError, KeyError, AdaInferError):
            pass  # absent or damaged: fit again
        return None

    def get_or_fit(self, key: dict[str, Any], fit: Callable[[], TunedLens]) -> TunedLens:
        """The stored lens, else ``fit()`` stored; under the key's lock, as traces are
        (:meth:`adainfer.extract.store.TraceStore.get_or_compute`): jobs sharing the folder fit it
        once.
        """
        lens = self.get(key)
        if lens is not None:
            return lens
        if self.read_only:
            return fit()
        folder = self.path(key)
        with exclusive(self.root / LOCKS / f"{folder.name}.lock", f"tuned lens {folder.name}"):
            lens = self.get(key)  # fitted by the job that held the lock meanwhile?
            return lens if lens is not None else self._fit_and_store(key, fit)

    def _fit_and_store(self, key: dict[str, Any], fit: Callable[[], TunedLens]) -> TunedLens:
        folder = self.path(key)
        lens = fit()
        if self.read_only:
            return lens

        def write(tmp: Path) -> None:
            lens.save(tmp)
            (tmp / "key.json").write_text(json.dumps(key, sort_keys=True))

        try:
            publish_folder(folder, write)
        except OSError as err:
            log.warning(
                "could not store the tuned lens in %s (%s: %s); the run goes on with it, unstored",
                folder,
                type(err).__name__,
                err,
            )
        return lens
