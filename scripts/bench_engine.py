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

**A pipeline job's own policy** (``--run``, repeatable): the run.py overrides of one job, in
one quoted string. The job is composed as ``run.py preset=paper`` would (unless the string
names a preset, e.g. ``--run preset=certified`` for the default job; ``stage=extract``
semantics: the traces come from the trace store when that job, or a study running it, stored
them, else from one LLM pass; the model's weights are loaded; no MLflow run), its policy is
fitted on the fit records and, with ``risk.epsilon``, calibrated (adainfer.decide.stage, as the job
would), and that policy with its probe (a tuned lens too) is timed through the engine against
the full forward on the job's test prompts (the first ``--n-timed``), at each
``--batch-sizes``. The rows have the columns above; the verdict: measured >= ``--min-speedup``
(default 1.2) and every exit equal to the trace evaluation's. ``--device`` sets the job's
trainer.accelerator / trainer.devices; the rest (model, task, sizes, shots, model.dtype) is the
job's own. The overrides must equal the study's job (sizes, shots, seed, probe, calibration)
for its traces and tuned lens to be reused.

Issue #14's check, with scripts/risk_study.py's full study (its docstring) run first: put the
best deployable policy of SmolLM2's SST-2 and AG News rows (classifier=, probe=,
classifier.schedule=; here ``tuned state+risk``) into the jobs, exactly as that study ran them:

    ADAINFER_DATA_DIR=../shared/data python scripts/bench_engine.py --batch-sizes 1 16 \\
        --repeats 3 --n-timed 128 \\
        --run "model=smollm2_135m task=sst2 shots=5 task.n_train=100 task.n_test=472 \\
               task.n_calibration=400 task.calibration_from=test classifier=state probe=tuned \\
               classifier.first_layer=auto risk.epsilon=0.01 risk.delta=0.1" \\
        --run "model=smollm2_135m task=ag_news shots=5 task.n_train=100 task.n_test=500 \\
               task.n_calibration=2000 classifier=state probe=tuned \\
               classifier.first_layer=auto risk.epsilon=0.01 risk.delta=0.1"

A quick smoke run (a tiny random model; the generated task needs no data):

    python scripts/bench_engine.py --batch-sizes 1 4 --repeats 2 --run "model=tiny_llama \\
        task=synthetic_next_item classifier=state probe=tuned task.n_train=20 task.n_test=20 \\
        task.n_calibration=24 risk.epsilon=0.2 risk.bound=hb classifier.first_layer=auto"
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import shlex
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import compose_config, use_shared_data
from hydra.utils import instantiate

from adainfer.decide.costs import run_costs
from adainfer.decide.policies import GapThreshold, SVMPolicy
from adainfer.decide.policies.base import earliest_settled
from adainfer.decide.stage import decide
from adainfer.engine import EarlyExitEngine, FixedExit
from adainfer.engine.timing import (
    measure_prices,
    price_policy,
    time_against_full,
    timed_ideal_speedup,
)
from adainfer.errors import AdaInferError, fail
from adainfer.extract.extractor import prepare
from adainfer.extract.passes import extract_records
from adainfer.llm.batching import on_trainer_device, one_device, probe_trainer
from adainfer.run import job as pipeline

TARGETS = {1: 0.9, 16: 0.8}  # measured / ideal_T, by batch size
QUIET = {"enable_progress_bar": False}
# Options of the default mode; a --run job takes these settings from its own overrides.
DEFAULT_MODE_ONLY = ("models", "task", "shots", "n_train", "n_test", "dtype")


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
    print_header()
    for bs in args.batch_sizes:
        timed_rows(engines, test.input_ids, test.gold, trace, bs, args, loaded, "svm")


def print_header(width: int = 15) -> None:
    """The legend and the column names of :func:`timed_rows`' rows."""
    print(
        "exit: mean exit layer; =trace: exits equal to the trace evaluation; ideal_L / ideal_F / "
        "ideal_T: speedup from the layers run / from FLOPs (b) / from the executed work timed"
    )
    print(
        f"{'policy':<{width}}{'bs':>3}{'exit':>6}{'acc':>6}{'=trace':>7}{'eq2(a)':>7}"
        f"{'flops(b)':>9}{'ideal_L':>8}{'ideal_F':>8}{'ideal_T':>8}{'measured':>15}"
        f"{'m/ideal_L':>10}{'m/ideal_T':>10}  target"
    )


def label_width(labels) -> int:
    """The policy column's width: 15, or wider for a long label."""
    return max(15, 1 + max(len(label) for label in labels))


def timed_rows(
    engines: dict[str, EarlyExitEngine],
    input_ids: list[list[int]],
    gold: np.ndarray,
    trace: dict[str, np.ndarray],
    bs: int,
    args: argparse.Namespace,
    loaded,
    priced_by: str,
    min_speedup: float | None = None,
) -> dict[str, tuple[float, float]]:
    """Time every engine against the full forward at batch size ``bs`` and print one row
    each; the verdict: measured / ideal_T against TARGETS, or, with ``min_speedup``, the
    measured speedup against it. Returns (measured speedup, share of exits = trace) by label."""
    timings = time_against_full(
        engines, input_ids, bs, repeats=args.repeats, all_logits=args.all_logits
    )
    batches = engines[priced_by].batches(input_ids, bs)
    results = [timing.result for timing in timings.values()]
    prices = measure_prices(engines[priced_by], batches, results, args.repeats)
    width, rows = batches[0][1].shape[1], len(batches[0][1])
    layer_s, probe_s = prices.layer[width, rows], prices.probe[width, rows]
    print(
        f"-- batch size {bs}: one layer {layer_s * 1e3:.1f} ms, one probe of the batch "
        f"{probe_s * 1e3:.1f} ms (= {probe_s / layer_s:.1f} layers); "
        f"load average {load_average()}"
    )
    name_width = label_width(engines)
    out = {}
    for label, engine in engines.items():
        timing = timings[label]
        cost = run_costs(timing.result, loaded.config, engine.policy, engine.lens)
        result = timing.result
        priced = price_policy(prices, engine.policy, result, hidden_size=loaded.hidden_size)
        ideal_t = timed_ideal_speedup(result, priced)
        ratio = timing.best_speedup / ideal_t
        agree = np.mean(result.exit_layer == trace[label])
        target = TARGETS.get(bs)
        verdict = ""
        if min_speedup is not None:
            fast = "met" if timing.best_speedup >= min_speedup else "MISSED"
            same = "met" if agree == 1 else "MISSED"
            verdict = f"measured >= {min_speedup}: {fast}; exits = trace: {same}"
        elif target is not None:
            verdict = f">= {target}: {'met' if ratio >= target else 'MISSED'}"
        acc = np.mean(result.prediction == gold)
        print(
            f"{label:<{name_width}}{bs:>3}{result.exit_layer.mean():>6.1f}{acc:>6.2f}{agree:>7.0%}"
            f"{cost.eq2_ratio:>7.3f}{cost.flops_ratio:>9.3f}"
            f"{cost.ideal_speedup_layers:>8.2f}{cost.ideal_speedup_flops:>8.2f}{ideal_t:>8.2f}"
            f"{timing.best_speedup:>8.2f} ({timing.speedup:4.2f})"
            f"{timing.best_speedup / cost.ideal_speedup_layers:>10.2f}{ratio:>10.2f}"
            f"  {verdict}"
        )
        out[label] = (timing.best_speedup, float(agree))
    return out


def job_overrides(run: str, device: str) -> list[str]:
    """A ``--run`` string as the job's overrides: the model placed on ``device`` (the job's
    ``trainer.accelerator`` / ``trainer.devices``) and ``stage=extract`` (traces from the store,
    else an LLM pass; weights allowed, no MLflow run)."""
    overrides = shlex.split(run)
    owned = [o for o in overrides if o.lstrip("+~").split("=", 1)[0] in ("stage", "engine")]
    if owned:
        raise AdaInferError(
            f"--run sets {owned}: the bench reads or extracts the traces and times the engine "
            "itself",
            "drop them from --run",
        )
    where = torch.device(device)
    devices = "1" if where.index is None else f"[{where.index}]"
    return [*overrides, f"trainer.accelerator={where.type}", f"trainer.devices={devices}"] + [
        "stage=extract"
    ]


def job_label(cfg, policy, limit) -> str:
    """The job's policy as scripts/risk_study.py names its methods (e.g. tuned state+risk)."""
    label = ("tuned " if cfg.probe.name == "tuned" else "") + policy.name
    label += "+risk" if limit is not None else ""
    schedule = cfg.classifier.get("schedule", "all")
    return label if schedule == "all" else f"{label} {schedule}"


def bench_job(run: str, args: argparse.Namespace) -> list[str]:
    """Time the policy a pipeline job fits and calibrates (``--run``) against the full forward,
    on the job's test prompts; the verdict lines."""
    cfg = compose_config(job_overrides(run, args.device))
    job = pipeline.compose(cfg)
    loaded, verdicts = job.model, []
    for name in job.prompts:
        traces = pipeline.extract(job, name)
        outcome = decide(traces, copy.deepcopy(job.policy), job.limit, cfg.risk.resplits)
        one = one_device(job.extractor.trainer_kwargs)
        on_trainer_device(loaded, probe_trainer(one))  # loads weights
        engine = EarlyExitEngine(loaded, outcome.policy, traces.probe)
        test = job.prompts[name].test
        n = len(test.input_ids) if args.n_timed is None else min(args.n_timed, len(test.input_ids))
        ids, gold, lengths = test.input_ids[:n], test.gold[:n], test.seq_len[:n]
        label = job_label(cfg, job.policy, job.limit)
        if outcome.chosen is not None:  # classifier=auto: the candidate it chose decides
            label += f": {outcome.chosen}"
        m = outcome.metrics
        print(f"\n== {loaded.name} {name}: {label}; load average {load_average()}")
        if job.limit is None:
            print("threshold: the policy's own (no risk.epsilon)")
        else:
            certified = bool(m["risk_certified"])
            print(
                f"risk: epsilon={job.limit.epsilon}, delta={job.limit.delta}, bound="
                f"{job.limit.bound}, loss={job.limit.loss}, {int(m['risk_n'])} calibration "
                f"instances: {'certified' if certified else 'NOTHING certified (full model)'}"
                + (f", threshold {m['risk_threshold']:.4g}" if certified else "")
                + f", upper bound {m['risk_upper_bound']:.4f}"
            )
        print(
            f"trace evaluation on all {outcome.test.num_instances} test instances: acc drop "
            f"{100 * m['acc_drop']:+.1f} points, honest FLOPs {m['honest_flops_ratio']:.3f}, "
            f"mean exit {m['exit_layer_mean']:.1f} of {loaded.num_layers}"
        )
        print(
            f"timed: {n} test prompts of {lengths.min()}-{lengths.max()} tokens; V="
            f"{loaded.vocab_size}; full-model accuracy "
            f"{np.mean(outcome.test.argmax[:n, -1] == gold):.2f}; engine on {engine.device}"
        )
        print_header(label_width([label]))
        for bs in args.batch_sizes:
            trace = {label: outcome.result.exit_layer[:n]}
            speedup, agree = timed_rows(
                {label: engine}, ids, gold, trace, bs, args, loaded, label, args.min_speedup
            )[label]
            fast = "met" if speedup >= args.min_speedup and agree == 1 else "MISSED"
            verdicts.append(
                f"{loaded.name} {name} {label} at batch {bs}: measured {speedup:.2f}x "
                f"(>= {args.min_speedup}), exits = trace {agree:.0%} (100%): {fast}"
            )
    return verdicts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["smollm2_135m", "gemma3_270m"])
    parser.add_argument("--task", default="synthetic_next_item", help="a conf/task/ option")
    parser.add_argument("--shots", type=int, default=5)
    parser.add_argument("--n-train", type=int, default=32, help="prompts the SVM is fitted on")
    parser.add_argument("--n-test", type=int, default=16, help="prompts timed")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per batch size")
    parser.add_argument("--dtype", default=None, help="model weights: float32 (default), bfloat16")
    parser.add_argument("--device", default="cpu", help="where the model runs: cpu, cuda")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's own choice)"
    )
    parser.add_argument(
        "--all-logits",
        action="store_true",
        help="time model(...) with the LM head at every position (its default) instead of one",
    )
    parser.add_argument(
        "--run",
        action="append",
        default=[],
        metavar="OVERRIDES",
        help="time this pipeline job's fitted (and calibrated) policy instead: its run.py "
        "overrides in one quoted string; repeatable",
    )
    parser.add_argument(
        "--n-timed", type=int, default=None, help="--run: time the first N test prompts (all)"
    )
    parser.add_argument(
        "--min-speedup", type=float, default=1.2, help="--run: the measured speedup to reach"
    )
    args = parser.parse_args()
    if args.run:
        given = [o for o in DEFAULT_MODE_ONLY if getattr(args, o) != parser.get_default(o)]
        if given:
            names = ", ".join("--" + o.replace("_", "-") for o in given)
            parser.error(
                f"{names}: --run takes these from the job (model=, task=, shots=, "
                "task.n_train=, task.n_test=, model.dtype= in its overrides)"
            )
    args.dtype = args.dtype or "float32"

    if args.threads:
        torch.set_num_threads(args.threads)
    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("adainfer").setLevel(logging.ERROR)
    use_shared_data()
    where = args.device
    if where.startswith("cuda"):
        where = torch.cuda.get_device_name(torch.device(where))
    print(f"torch {torch.__version__} on {where}, {torch.get_num_threads()} threads, ", end="")
    if args.run:
        print(f"repeats={args.repeats}, batch sizes {args.batch_sizes}")
        print("load average at start:", load_average())
        started = time.perf_counter()
        try:
            verdicts = [line for run in args.run for line in bench_job(run, args)]
        except AdaInferError as err:
            fail(err)
        print("\nverdicts:\n" + "\n".join(f"- {line}" for line in verdicts))
        print(f"total {time.perf_counter() - started:.0f} s; load average {load_average()}")
        return
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
