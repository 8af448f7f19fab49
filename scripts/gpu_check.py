"""The Python half of scripts/gpu_check.sh: checks that need the model in hand.

``placement``: SmolLM2's converted folder loaded as a hub model (a) plainly, (b) with
``device_map="auto"`` and (c) with a device map that leaves half its layers off the GPU
(offloaded to the CPU, on the CPU machine to disk: accelerate's hooks run them on the main
device); features, tuned lens and engine of each, all on ``--device`` and left there, with the
same features as (a).
``run``: the MLflow run a ``run.py ... engine=true`` job logged has its engine metrics.

Each check prints ``PASS name`` or ``FAIL name: why``; the exit status is the number of FAILs.

    python scripts/gpu_check.py placement --device cuda
    python scripts/gpu_check.py run --tracking-uri sqlite:///mlflow.db --model smollm2_135m
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import traceback
from collections.abc import Callable

import numpy as np
import torch
from common import compose_config, use_shared_data
from hydra.utils import instantiate
from transformers import AutoModelForCausalLM, AutoTokenizer

FAILS: list[str] = []


def check(name: str, test: Callable[[], str | None]) -> None:
    """Run one check; print PASS (with what it measured) or FAIL."""
    try:
        note = test()
    except Exception as err:  # a check that crashes is a failed check, the others still run
        traceback.print_exc()
        print(f"FAIL {name}: {type(err).__name__}: {err}", flush=True)
        FAILS.append(name)
        return
    print(f"PASS {name}" + (f" ({note})" if note else ""), flush=True)


def _devices(model: torch.nn.Module) -> set[str]:
    return {str(p.device) for p in model.parameters()}


def placement(device: str) -> None:
    from adainfer.decide.policies import GapThreshold
    from adainfer.engine import EarlyExitEngine
    from adainfer.engine.timing import engine_metrics
    from adainfer.extract.extractor import prepare
    from adainfer.extract.passes import extract_records
    from adainfer.llm import HubModel
    from adainfer.llm.cache import converted_dir, file_sha256
    from adainfer.llm.lenses import fit_tuned_lens
    from adainfer.llm.loading import LoadedModel
    from adainfer.llm.placement import dispatched, input_device

    where = torch.device(device)
    trainer = {"enable_progress_bar": False, "accelerator": where.type, "devices": 1}
    cfg = compose_config(["model=smollm2_135m", "task.n_train=16", "task.n_test=16"])
    spec, task = instantiate(cfg.model, _convert_="all"), instantiate(cfg.task, _convert_="all")
    layers = spec.load().num_layers  # the GGUF file is converted on the first load
    folder = converted_dir(file_sha256(spec.gguf_path())[:20])
    main = "cpu" if where.type == "cpu" else f"{where.type}:{where.index or 0}"

    def hub(device_map) -> object:
        return HubModel(
            name="smollm2_hub",
            repo_id="local/smollm2",
            path=str(folder),
            dtype="bfloat16",
            device_map=device_map,
            model_type="llama",
        ).load()

    plain = hub(None)
    train, test = prepare(task, task.load(), plain, shots=3, seed=0)
    found: dict[str, object] = {}

    def stays() -> str:
        assert _devices(plain.model) == {"cpu"}, "a hub model loads on the CPU"
        found["plain"] = extract_records(plain, test, 8, trainer)
        assert input_device(plain.model).type == where.type, _devices(plain.model)
        lens = found["lens"] = fit_tuned_lens(plain, train, 8, trainer_kwargs=trainer)
        extract_records(plain, test, 8, trainer, probe=lens)
        assert {d.type for d, _ in lens._placed} == {where.type}, lens._placed.keys()
        gaps = found["plain"].values["gap"][:, :-1]
        policy = found["policy"] = GapThreshold(threshold=float(np.quantile(gaps, 0.6)))
        metrics = engine_metrics(plain, policy, test.input_ids, 8, probe=lens)
        assert EarlyExitEngine(plain, policy, lens).device.type == where.type
        assert _devices(plain.model) == {str(input_device(plain.model))}
        speedup = metrics["engine_speedup"]
        return f"passes and engine on {input_device(plain.model)}, engine speedup {speedup:.2f}"

    check("model stays on its device", stays)

    def same_features(loaded, label: str) -> str:
        records = extract_records(loaded, test, 8, trainer)
        gap = np.abs(records.values["gap"] - found["plain"].values["gap"]).max()
        agree = np.mean(records.argmax == found["plain"].argmax)
        assert gap < 0.02 and agree > 0.98, f"gap differs by {gap}, argmax agrees {agree:.1%}"
        lens = fit_tuned_lens(loaded, train, 8, trainer_kwargs=trainer).weight
        off = float((lens - found["lens"].weight).norm() / found["lens"].weight.norm())
        assert off < 1e-2, f"its tuned lens is {off:.1e} off the plain load's"
        engine = EarlyExitEngine(loaded, found["policy"])
        result = engine.run(test.input_ids, 8)
        assert engine.device.type == where.type, engine.device
        assert result.exit_layer.mean() < layers, "no prompt left early: the engine went unused"
        return f"{label}: gap within {gap:.1e} of the plain load, lens {off:.0e} off, " + (
            f"engine on {engine.device}, mean exit {result.exit_layer.mean():.1f}"
        )

    def auto() -> str:
        loaded = hub("auto")
        assert input_device(loaded.model).type == where.type, _devices(loaded.model)
        return same_features(loaded, f"device_map=auto put it on {_devices(loaded.model)}")

    check("device_map=auto load", auto)

    def split() -> str:
        away = "cpu" if where.type != "cpu" else "disk"
        device_map = {"model.embed_tokens": main, "model.rotary_emb": main}
        half = {f"model.layers.{i}": main if i < layers // 2 else away for i in range(layers)}
        device_map |= half | {"model.norm": main, "lm_head": main}
        model = AutoModelForCausalLM.from_pretrained(
            folder,
            dtype=torch.bfloat16,
            device_map=device_map,
            offload_folder=tempfile.mkdtemp(prefix="gpu-check-offload-"),
        )
        tokenizer = AutoTokenizer.from_pretrained(folder)
        tokenizer.padding_side = "right"
        loaded = LoadedModel("smollm2_split", tokenizer, model.config, "split", lambda: model)
        warned = _capture_warnings("adainfer.llm.placement")
        assert dispatched(loaded.model), "a split device map is dispatched by accelerate"
        note = same_features(loaded, f"{layers - layers // 2} layers on {away}")
        if where.type != "cpu":
            assert warned and "on the CPU or disk" in warned[0], warned
        return note

    check("split device map (layers offloaded)", split)


def _capture_warnings(logger: str) -> list[str]:
    """Messages ``logger`` warns from now on."""
    messages: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    logging.getLogger(logger).addHandler(Keep(logging.WARNING))
    return messages


def mlflow_run(tracking_uri: str, experiment: str, model: str, device: str = "cuda") -> None:
    import mlflow

    def logged() -> str:
        mlflow.set_tracking_uri(tracking_uri)
        runs = mlflow.search_runs(
            experiment_names=[experiment], filter_string=f"params.model = '{model}'"
        )
        assert len(runs) == 1, f"{len(runs)} runs of {model} in {experiment}"
        run = runs.iloc[0]
        assert run["status"] == "FINISHED", run["status"]
        speedup = run["metrics.engine_speedup"]
        assert np.isfinite(speedup), "no engine_speedup metric"
        tag = run.get("tags.engine_device")  # where pipeline.py ran the engine
        assert isinstance(tag, str) and tag.startswith(device), f"engine_device tag {tag}"
        return f"engine_speedup {speedup:.2f}, engine_acc {run['metrics.engine_acc']:.2f}"

    check(f"mlflow run of {model}", logged)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    one = sub.add_parser("placement")
    one.add_argument("--device", default="cuda")
    two = sub.add_parser("run")
    two.add_argument("--tracking-uri", required=True)
    two.add_argument("--experiment", default="gpu_check")
    two.add_argument("--model", required=True)
    two.add_argument("--device", default="cuda", help="where the engine should have run")
    args = parser.parse_args()
    logging.getLogger("lightning").setLevel(logging.ERROR)
    use_shared_data()
    if args.what == "placement":
        placement(args.device)
    else:
        mlflow_run(args.tracking_uri, args.experiment, args.model, args.device)
    sys.exit(len(FAILS))


if __name__ == "__main__":
    main()
