"""A local copy of a hub model (model.path): its identity is what the folder holds, and a folder
of another family than the chosen model config is refused."""

from __future__ import annotations

import json

import pytest
from conftest import compose_cfg
from hydra.utils import instantiate
from transformers import AutoConfig, AutoModelForCausalLM

from adainfer.errors import AdaInferError
from adainfer.llm import HubModel
from adainfer.llm.loading import folder_identity


def _save_tiny(folder, model_type: str, tokenizer, layers: int = 2) -> None:
    """A real checkpoint folder: a tiny random model of that family and a tokenizer."""
    config = AutoConfig.for_model(
        model_type,
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=64,
        ffn_dim=64,
        max_position_embeddings=128,
    )
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def test_a_folder_identity_follows_its_config_and_weights(tmp_path, tiny_llama):
    folder = tmp_path / "llama"
    _save_tiny(folder, "llama", tiny_llama.tokenizer)
    before = folder_identity(folder)
    assert folder_identity(folder) == before  # the same folder, the same identity
    loaded = HubModel(name="local", repo_id="x/y", path=str(folder), dtype="float32").load()
    assert loaded.identity == before
    # A refreshed checkpoint: more layers (another config and weight file size).
    _save_tiny(folder, "llama", tiny_llama.tokenizer, layers=3)
    assert folder_identity(folder) != before
    refreshed = folder_identity(folder)
    # Only the config changes (a weight file of the same size keeps its name and size).
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "rms_norm_eps": 1e-5}))
    assert folder_identity(folder) not in (before, refreshed)


def test_a_weight_file_of_another_size_changes_the_identity(tmp_path, tiny_llama):
    folder = tmp_path / "llama"
    _save_tiny(folder, "llama", tiny_llama.tokenizer)
    before = folder_identity(folder)
    with (folder / "model.safetensors").open("ab") as weights:
        weights.write(b"\0" * 16)
    assert folder_identity(folder) != before


def test_a_folder_of_another_family_is_refused(tmp_path, tiny_llama):
    folder = tmp_path / "opt"
    _save_tiny(folder, "opt", tiny_llama.tokenizer)
    model = instantiate(compose_cfg(["model=llama2_7b", f"model.path={folder}"]).model)
    with pytest.raises(AdaInferError) as err:
        model.load()
    message = str(err.value)
    assert "'llama2_7b' is a llama model" in message and "holds a 'opt' model" in message
    assert f"model.path={folder}" in message and "a model config of the opt family" in message
