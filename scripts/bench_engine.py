"""Does early exit really save time? The engine against the full forward, and model load times.

For each model (built from conf/model/*.yaml with Hydra's compose API, as run.py would):

1. load it twice into a fresh cache folder ($ADAINFER_CACHE_DIR): the first load converts the
   GGUF file, the second reads the cached safetensors (target: >= 5x faster);
2. prompt a task (default: the generated next_item rules, 5-shot), record the layer features
   of its train split and fit an SVM exit policy on them;
3. on the test prompts, at each batch size, run fixed exits at L/4, L/2, 3L/4, the SVM policy
   (probing every layer, and from ``probe.first_layer=auto``'s layer on) and the paper's
   untrained ``gap > 0.8`` rule through the engine, and time them against ``model(...)`` on the
   same batches.

It prints, per (model, policy, batch size): the mean exit layer, the accuracy, the share of
prompts whose online exit equals the trace evaluation's, the paper's Eq. 2 ratio (a), the
executed-FLOPs ratio (b), three ideal speedups, the measured speedup and measured / ideal:

- ideal_L: from the decoder layers run alone (full layer-rows / executed layer-rows);
- ideal_F: from the FLOPs of (b), probes and classifier included;
- ideal_T: from the work executed (the layer inputs of each batch, the layers on the rows that
  ran them, the probes on the rows read, the policy calls), each part priced at the measured
  time of that same shape run by itself (``timing.measure_prices``, ``timing.price_policy``). It
  is what an engine with no overhead of its own would reach.

"measured" is the fastest repeat of each batch, summed (timeit's rule: on a shared machine the
fastest run is the least disturbed); the median of the repeats is shown in brackets.
Targets (docs/ENGINE.md says why ideal_T): measured >= 0.9 x ideal_T at batch 1, >= 0.8 x at
batch 16; m/ideal_L is printed beside it.

    python scripts/bench_engine.py             # both models, batch 1 and 16: ~5 min on 2 idle cores
    python scripts/bench_engine.py --models smollm2_135m --n-test 8 --repeats 1   # a quick look
    python scripts/bench_engine.py --device cuda --dtype bfloat16   # on a GPU
    ADAINFER_DATA_DIR=../shared/data python scripts/bench_engine.py --task sst2 --shots 0
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import compose_config, use_shared_data
from hydra.utils import instantiate

from adainfer.costs import run_costs
from adainfer.engine import EarlyExitEngine, FixedExit
from adainfer.extract import prepare
from adainfer.policies import GapThreshold, SVMPolicy
from adainfer.policies.base import earliest_settled
from adainfer.runner import extract_records
from adainfer.timing import measure_prices, price_policy, time_against_full, timed_ideal_speedup

TARGETS = {1: 0.9, 16: 0.8}  # measured / ideal_T, by batch size
QUIET = {"enable_progress_bar": False}


def configured(model: str, task: str, n_train: int, n_test: int, dtype: str):
    """The model source and task objects of ``conf/`` for these overrides."""
    overrides = [f"model={model}", f"task={task}", f"task.n_train={n_train}"]
    overrides += [f"task.n_test={n_test}", f"model.dtype={dtype}"]
    cfg = compose_config(overrides)
    return instantiate(cfg.model, _convert_="all"), instantiate(cfg.task, _convert_="all")


def trainer_on(device: str) -> dict:
    """Lightning Trainer kwargs of a pass on ``device`` (cpu, cuda, cuda:1, mps): the feature
    extraction puts the model there, and there it stays for the engine."""
    where = torch.device(device)
    devices = 1 if where.index is None else [where.index]
    return QUIET | {"accelerator": where.type, "devices": devices}


def load_average() -> str:
    """The 1, 5 and 15 minute load averages: how much else the cores were running."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def timed_load(spec) -> tuple[object, float]:
    start = time.perf_counter()
    loaded = spec.load()
    loaded.model  # noqa: B018 - the weights load on first access
    return loaded, time.perf_counter() - start


def bench_model(name: str, args: argparse.Namespace, cache: Path) -> None:
    spec, task = configured(name, args.task, args.n_train, args.n_test, args.dtype)
    os.environ["ADAINFER_CACHE_DIR"] = str(cache)
    _, cold = timed_load(spec)
    loaded, cached = timed_load(spec)
    verdict = "met" if cold / cached >= 5 else "MISSED"
    print(f"\n== {name}: load cold {cold:.1f} s, cached {cached:.2f} s, ", end="")
    print(f"{cold / cached:.0f}x (target >= 5x: {verdict}); load average {load_average()}")

    train, test = prepare(task, task.load(), loaded, shots=args.shots, seed=0)
    train_records = extract_records(loaded, train, 16, trainer_on(args.device))
    test_records = extract_records(loaded, test, 16, trainer_on(args.device))
    svm = SVMPolicy().fit(train_records)
    late = copy.deepcopy(svm)
    late.first_layer = earliest_settled(train_records)
    L = loaded.num_layers
    policies = {f"fixed L/4={L // 4}": FixedExit(L // 4), f"fixed L/2={L // 2}": FixedExit(L // 2)}
    policies |= {f"fixed 3L/4={3 * L // 4}": FixedExit(3 * L // 4), "svm": svm}
    policies[f"svm from {late.first_layer}"] = late  # probe.first_layer=auto
    policies["gap>0.8"] = GapThreshold()  # the paper's rule without training
    engines = {label: EarlyExitEngine(loaded, policy) for label, policy in policies.items()}

    trace = {label: policy.exit_layers(test_records) for label, policy in policies.items()}
    lengths = test.seq_len
    full_acc = np.mean(test_records.argmax[:, -1] == test.gold)
    print(
        f"{len(lengths)} test prompts of {lengths.min()}-{lengths.max()} tokens; L={L}, "
        f"V={loaded.vocab_size}; full-model accuracy {full_acc:.2f}; engine on "
        f"{engines['svm'].device}"
    )
    print(
        "exit: mean exit layer; =trace: exits equal to the trace evaluation; ideal_L / ideal_F / "
        "ideal_T: speedup from the layers run / from FLOPs (b) / from the executed work timed"
    )
    header = (
        f"{'policy':<15}{'bs':>3}{'exit':>6}{'acc':>6}{'=trace':>7}{'eq2(a)':>7}{'flops(b)':>9}"
        f"{'ideal_L':>8}{'ideal_F':>8}{'ideal_T':>8}{'measured':>15}{'m/ideal_L':>10}"
        f"{'m/ideal_T':>10}  target"
    )
    print(header)
    for bs in args.batch_sizes:
        timings = time_against_full(
            engines, test.input_ids, bs, repeats=args.repeats, all_logits=args.all_logits
        )
        batches = engines["svm"].batches(test.input_ids, bs)
        results = [timing.result for timing in timings.values()]
        prices = measure_prices(engines["svm"], batches, results, args.repeats)
        width, rows = batches[0][1].shape[1], len(batches[0][1])
        layer_s, probe_s = prices.layer[width, rows], prices.probe[width, rows]
        print(
            f"-- batch size {bs}: one layer {layer_s * 1e3:.1f} ms, one probe of the batch "
            f"{probe_s * 1e3:.1f} ms (= {probe_s / layer_s:.1f} layers); "
            f"load average {load_average()}"
        )
        for label, engine in engines.items():
            timing = timings[label]
            cost = run_costs(timing.result, loaded.config, engine.policy)
            result = timing.result
            priced = price_policy(prices, engine.policy, result, hidden_size=loaded.hidden_size)
            ideal_t = timed_ideal_speedup(result, priced)
            ratio = timing.best_speedup / ideal_t
            target = TARGETS.get(bs)
            verdict = ""
            if target is not None:
                verdict = f">= {target}: {'met' if ratio >= target else 'MISSED'}"
            agree = np.mean(result.exit_layer == trace[label])
            acc = np.mean(result.prediction == test.gold)
            print(
                f"{label:<15}{bs:>3}{result.exit_layer.mean():>6.1f}{acc:>6.2f}{agree:>7.0%}"
                f"{cost.eq2_ratio:>7.3f}{cost.flops_ratio:>9.3f}"
                f"{cost.ideal_speedup_layers:>8.2f}{cost.ideal_speedup_flops:>8.2f}{ideal_t:>8.2f}"
                f"{timing.best_speedup:>8.2f} ({timing.speedup:4.2f})"
                f"{timing.best_speedup / cost.ideal_speedup_layers:>10.2f}{ratio:>10.2f}"
                f"  {verdict}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["smollm2_135m", "gemma3_270m"])
    parser.add_argument("--task", default="synthetic_next_item", help="a conf/task/ option")
    parser.add_argument("--shots", type=int, default=5)
    parser.add_argument("--n-train", type=int, default=32, help="prompts the SVM is fitted on")
    parser.add_argument("--n-test", type=int, default=16, help="prompts timed")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per batch size")
    parser.add_argument("--dtype", default="float32", help="model weights: float32, bfloat16")
    parser.add_argument("--device", default="cpu", help="where the model runs: cpu, cuda")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's own choice)"
    )
    parser.add_argument(
        "--all-logits",
        action="store_true",
        help="time model(...) with the LM head at every position (its default) instead of one",
    )
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("adainfer").setLevel(logging.ERROR)
    use_shared_data()
    where = args.device
    if where.startswith("cuda"):
        where = torch.cuda.get_device_name(torch.device(where))
    print(f"torch {torch.__version__} on {where}, {torch.get_num_threads()} threads, ", end="")
    print(f"{args.dtype}; ", end="")
    print(f"task={args.task}, {args.shots}-shot, n_train={args.n_train}, ", end="")
    print(f"n_test={args.n_test}, repeats={args.repeats}")
    print("load average at start:", load_average())
    started = time.perf_counter()
    previous = os.environ.get("ADAINFER_CACHE_DIR")
    try:
        for name in args.models:
            with tempfile.TemporaryDirectory(prefix="adainfer-bench-") as cache:
                bench_model(name, args, Path(cache))
        print(f"\ntotal {time.perf_counter() - started:.0f} s; ", end="")
        print("load average at end:", load_average())
    finally:
        if previous is None:
            os.environ.pop("ADAINFER_CACHE_DIR", None)
        else:
            os.environ["ADAINFER_CACHE_DIR"] = previous


if __name__ == "__main__":
    main()
