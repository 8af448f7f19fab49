"""Does early exit pay when generating? Answers, honest FLOPs per token and tokens/s, against
``model.generate`` in the same run.

For each model and task (default: SmolLM2 and Gemma-3; SQuAD and two Function Vectors tasks
whose answers run to several tokens, english-french and country-capital; 5-shot), a pipeline
job with ``task.generate=true`` is composed as ``run.py`` would (its MLflow store a temporary
one; no run is logged): its policy (default: the state head read through a tuned lens, as the
default job) is fitted on the train records, calibrated on first tokens, and then certified on
whole answers (``risk.answers``: by default, w.p. >= 1 - delta at most epsilon of the answers
differ from the full model's; :func:`adainfer.run.generation.calibrate_answers`). On the first
``--n-timed`` test prompts, at each batch size, it generates greedily (stop string "\\n", the
template's next line; ``--max-new-tokens``) three ways, each timed (fastest of ``--repeats``,
after a warm-up):

- ``hf``: ``model.generate(do_sample=False, stop_strings=["\\n"])`` on the same padded batches;
- ``never``: adainfer's engine at full depth (its tokens must equal ``hf``'s);
- ``answers``: the engine exiting token by token under the policy certified on answers
  (``kv_fill``: ``--kv-fill``); with ``--first-token``, also ``1st token``: the same policy at
  the threshold certified on first tokens only (``risk.epsilon`` on the first token's accuracy),
  which says nothing of whole answers: what exits would buy, and why certification refuses it.

Per row: exact match of the full model and of early exit (and SQuAD's F1), answers equal to the
full model's, mean exit layer per generated token after the first, the honest FLOPs ratio of
those tokens (``gen_flops_ratio``: layers, probes, translators, policy calls and K/V fills;
:func:`adainfer.decide.costs.generation_costs`) and of the whole generation with its prompt prefill,
the speedup that whole-generation ratio predicts, tokens/s of each way, and the verdicts:
``never`` >= 0.9x ``hf``'s tokens/s; the certified policy's measured speedup over ``hf`` >= 0.8x
the speedup its executed work predicts.

    ADAINFER_DATA_DIR=../shared/data python scripts/bench_generate.py        # the study
    python scripts/bench_generate.py --models tiny_llama --tasks country-capital --shots 2 \\
        --n-train 16 --n-calibration 24 --n-timed 8 --epsilon 0.3          # a quick look

Tokens are counted the same way for all: each prompt's new tokens up to its stop or
end-of-sequence token (included); ``hf`` is credited with ``never``'s count (its tokens must be
the same). The measured speedup is tokens/s over ``hf``'s: the time ratio wherever the answers
are the full model's.
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import shlex
import tempfile
import time
from functools import partial

import numpy as np
import torch
from common import REPO, compose_config, use_shared_data

from adainfer.decide.costs import generation_costs
from adainfer.decide.policies import NeverExit
from adainfer.decide.stage import decide
from adainfer.engine import EarlyExitEngine, generate
from adainfer.engine.timing import synchronize
from adainfer.errors import AdaInferError, fail
from adainfer.llm.batching import (
    length_order,
    on_trainer_device,
    one_device,
    pad_left,
    probe_trainer,
)
from adainfer.run import job as pipeline
from adainfer.run.generation import STOP, answer_scores, calibrate_answers

FV = ("english-french", "country-capital")
POLICY = (
    "classifier=state probe=tuned classifier.first_layer=auto risk.delta=0.1 risk.answers=equal"
)
TARGETS = {"never/hf": 0.9, "measured/predicted": 0.8}


def task_overrides(task: str) -> list[str]:
    """A conf/task option, or a Function Vectors task by name."""
    if (REPO / "conf" / "task" / f"{task}.yaml").exists():
        return [f"task={task}"]
    return ["task=function_vectors", f"task.name={task}"]


def _sized(pairs: list[str], task: str, default: int) -> int:
    """``--n-calibration-for squad=30`` (or ``--n-timed-for``): a per-task size, else
    ``default``."""
    for pair in pairs:
        name, _, value = pair.partition("=")
        if name == task:
            return int(value)
    return default


def hf_generate(
    loaded, ids: list[list[int]], max_new: int, batch_size: int, pad_id: int
) -> list[list[int]]:
    """``model.generate`` greedy with the stop string, on the batches the engine makes
    (shortest prompts first, left-padded); each row's new tokens up to its stop or
    end-of-sequence token (included), as :func:`adainfer.engine.generate` keeps them."""
    tok, model = loaded.tokenizer, loaded.model
    eos = model.generation_config.eos_token_id
    ends = set() if eos is None else {eos} if isinstance(eos, int) else set(eos)
    out: list[list[int]] = [[] for _ in ids]
    order = length_order(ids)
    for start in range(0, len(order), batch_size):
        index = order[start : start + batch_size]
        batch, mask = pad_left([ids[i] for i in index], pad_id)
        device = next(model.parameters()).device
        with torch.no_grad():
            new = model.generate(
                input_ids=batch.to(device),
                attention_mask=mask.to(device),
                max_new_tokens=max_new,
                do_sample=False,
                stop_strings=list(STOP),
                tokenizer=tok,
                pad_token_id=pad_id,
            )[:, batch.shape[1] :].tolist()
        for i, row in zip(index, new, strict=True):
            kept = []
            for token in row:
                kept.append(token)
                if token in ends or any(s in tok.decode(kept) for s in STOP):
                    break
            out[i] = kept
    return out


def fastest(run, warm, repeats: int, device) -> tuple[object, float]:
    """``run()``'s result and its fastest wall time over ``repeats``, after ``warm()`` (a short
    generation, so that no way pays for first calls)."""
    warm()
    result, best = None, float("inf")
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        result = run()
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return result, best


def row(
    never, policies: dict, ids, examples, bs: int, args: argparse.Namespace, squad
) -> list[str]:
    """Time ``hf``, ``never`` and each of ``policies`` (label -> engine) at batch size ``bs``;
    print a row per policy and return its verdict."""
    loaded, max_new = never.loaded, args.max_new_tokens
    timing = (args.repeats, never.device)
    hf_run = partial(hf_generate, loaded, ids, max_new, bs, never.pad_id)
    hf, hf_s = fastest(hf_run, partial(hf_generate, loaded, ids[:1], 2, 1, never.pad_id), *timing)
    run = partial(generate, stop=STOP, kv_fill=args.kv_fill)
    full, full_s = fastest(
        partial(run, never, ids, max_new, batch_size=bs), partial(run, never, ids[:1], 2), *timing
    )
    tokens = sum(map(len, full.tokens))
    same_as_hf = np.mean([a == b for a, b in zip(full.tokens, hf, strict=True)])
    full_scores = answer_scores(full.text, examples, squad)
    never_ok = hf_s / full_s >= TARGETS["never/hf"] and same_as_hf == 1
    verdicts = []
    for label, engine in policies.items():
        early, early_s = fastest(
            partial(run, engine, ids, max_new, batch_size=bs),
            partial(run, engine, ids[:1], 2),
            *timing,
        )
        cost = generation_costs(early, loaded.config, engine.policy, engine.lens)
        predicted = 1.0 / cost.flops_ratio_with_prefill
        # tokens/s over hf's: the time ratio when the answers are the full model's
        measured = sum(map(len, early.tokens)) / early_s / (tokens / hf_s)
        early_scores = answer_scores(early.text, examples, squad)
        equal = np.mean([a == b for a, b in zip(early.text, full.text, strict=True)])
        later = np.concatenate([w.exit_layer[1:] for w in early.work])
        exit_mean = later.mean() if later.size else float("nan")
        f1 = f"{full_scores['f1']:>8.3f}{early_scores['f1']:>8.3f}" if squad else f"{'-':>8}" * 2
        print(
            f"{label:<10}{bs:>3}{full_scores['em']:>8.3f}{early_scores['em']:>8.3f}{f1}"
            f"{equal:>7.0%}{exit_mean:>6.1f}{cost.flops_ratio:>10.3f}"
            f"{cost.flops_ratio_with_prefill:>9.3f}{predicted:>6.2f}{tokens / hf_s:>9.1f}"
            f"{tokens / full_s:>7.1f}{sum(map(len, early.tokens)) / early_s:>7.1f}"
            f"{hf_s / full_s:>7.2f}{measured:>6.2f}{measured / predicted:>7.2f}"
        )
        exit_ok = measured / predicted >= TARGETS["measured/predicted"]
        verdicts.append(
            f"batch {bs}: never = hf tokens {same_as_hf:.0%}, {hf_s / full_s:.2f}x hf's tokens/s "
            f"(>= 0.9: {'met' if never_ok else 'MISSED'}); {label}: {measured:.2f}x hf, "
            f"predicted {predicted:.2f}x (>= 0.8 of it: {'met' if exit_ok else 'MISSED'}); "
            f"answers = full {equal:.0%}"
        )
    return verdicts


def bench(model: str, task: str, args: argparse.Namespace, store: str) -> list[str]:
    """One (model, task): fit and certify the policy, then time the three ways; verdict lines."""
    n_cal = _sized(args.n_calibration_for, task, args.n_calibration)
    n_timed = _sized(args.n_timed_for, task, args.n_timed)
    overrides = [
        f"model={model}",
        *task_overrides(task),
        "task.generate=true",
        f"task.max_new_tokens={args.max_new_tokens}",
        f"shots={args.shots}",
        f"task.n_train={args.n_train}",
        f"task.n_test={n_timed}",
        f"task.n_calibration={n_cal}",
        f"risk.epsilon={args.epsilon}",
        f"risk.answer_grid={args.answer_grid}",
        f"kv_fill={args.kv_fill}",
        f"mlflow.tracking_uri={store}",
        f"trainer.accelerator={torch.device(args.device).type}",
        *shlex.split(args.policy),
    ]
    cfg = compose_config(overrides)
    job = pipeline.compose(cfg)
    loaded, lines = job.model, []
    for name in job.prompts:
        started = time.perf_counter()
        traces = pipeline.extract(job, name)
        outcome = decide(traces, copy.deepcopy(job.policy), job.limit, 0)
        on_trainer_device(loaded, probe_trainer(one_device(job.extractor.trainer_kwargs)))
        member, policy = job.inputs.members[name], outcome.policy
        first_token = copy.deepcopy(policy)  # its threshold certified on first tokens only
        squad = member.text_scores == "squad"
        cal_prompts = job.prompts[name].calibration
        calibration = calibrate_answers(
            loaded,
            policy,
            traces.probe,
            outcome.train,
            cal_prompts.input_ids if cal_prompts is not None else [],
            job.inputs.splits[name].calibration,
            job.limit,
            cfg.risk.answers,
            cfg.risk.answer_grid,
            (args.max_new_tokens, args.kv_fill, 1, squad),
        )
        ids, examples = job.prompts[name].test.input_ids, job.inputs.splits[name].test
        lengths = [len(x) for x in ids]
        print(
            f"\n== {loaded.name} {name}, {cfg.shots}-shot: {len(ids)} test prompts of "
            f"{min(lengths)}-{max(lengths)} tokens; L={loaded.num_layers}; policy "
            f"{cfg.probe.name} {policy.name}; risk.answers={cfg.risk.answers}: "
            + (
                f"certified at {calibration.threshold:.4g} ({calibration.losses} of "
                f"{calibration.n} calibration answers differ, {calibration.tested} thresholds "
                "passed)"
                if calibration.certified
                else f"NOTHING certified on {calibration.n} calibration answers (full model)"
            )
            + f"; fitting and calibrating took {time.perf_counter() - started:.0f} s"
        )
        print(
            f"{'policy':<10}{'bs':>3}{'em full':>8}{'em exit':>8}{'f1 full':>8}{'f1 exit':>8}"
            f"{'=full':>7}{'exit':>6}{'flops/tok':>10}{'+prefill':>9}{'pred':>6}{'tok/s hf':>9}"
            f"{'never':>7}{'exit':>7}{'nev/hf':>7}{'meas':>6}{'m/pred':>7}"
        )
        never = EarlyExitEngine(loaded, NeverExit(), traces.probe)
        policies = {"answers": EarlyExitEngine(loaded, policy, traces.probe)}
        if args.first_token:
            policies["1st token"] = EarlyExitEngine(loaded, first_token, traces.probe)
        for bs in args.batch_sizes:
            for verdict in row(never, policies, ids, examples, bs, args, squad):
                lines.append(f"{loaded.name} {name} {verdict}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["smollm2_135m", "gemma3_270m"])
    parser.add_argument("--tasks", nargs="+", default=["squad", *FV])
    parser.add_argument("--shots", type=int, default=5)
    parser.add_argument("--n-train", type=int, default=64)
    parser.add_argument("--n-calibration", type=int, default=100)
    parser.add_argument(
        "--n-calibration-for", nargs="*", default=[], metavar="TASK=N", help="per-task sizes"
    )
    parser.add_argument("--n-timed", type=int, default=32, help="test prompts generated")
    parser.add_argument(
        "--n-timed-for", nargs="*", default=[], metavar="TASK=N", help="per-task sizes"
    )
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--epsilon", type=float, default=0.1, help="risk.epsilon on answers")
    parser.add_argument("--answer-grid", type=int, default=8, help="risk.answer_grid")
    parser.add_argument("--kv-fill", default="propagate", choices=["propagate", "recompute"])
    parser.add_argument("--policy", default=POLICY, help="run.py overrides of the policy")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--first-token",
        action="store_true",
        help="also time the policy at its first-token threshold (not certified on answers)",
    )
    args = parser.parse_args()
    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("adainfer").setLevel(logging.ERROR)
    use_shared_data()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; load average "
        + " ".join(f"{x:.2f}" for x in os.getloadavg())
    )
    started, lines = time.perf_counter(), []
    try:
        with tempfile.TemporaryDirectory(prefix="adainfer-bench-gen-") as tmp:
            store = f"sqlite:///{tmp}/mlflow.db"
            for model in args.models:
                for task in args.tasks:
                    lines += bench(model, task, args, store)
    except AdaInferError as err:
        fail(err)
    print("\nverdicts:\n" + "\n".join(f"- {line}" for line in lines))
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
