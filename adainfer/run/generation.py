"""A job's generation stage (``task.generate=true``): the test answers generated in full, scored
as text.

The policy is fitted and scored as in every job, on the single-token records (each answer's
first token). This stage then generates every test prompt's answer greedily with the engine
(:func:`adainfer.engine.generate`, stop string ``"\\n"``: the template's next line) twice: with
``never`` (the full model) and with the fitted policy deciding, token by token, where each new
token is read. Both are scored against the gold answers: SQuAD's exact match and token F1 over
all annotator answers, Function Vectors' exact match as written
(:mod:`adainfer.tasks.answer_match`).

Metrics (``gen_*``): ``gen_em_full`` / ``gen_em``, ``gen_f1_full`` / ``gen_f1`` (SQuAD),
``gen_equal_full`` (share of answers identical to the full model's), ``gen_exit_layer_mean``
(per generated token after the first, which the full-depth prefill gives),
``gen_flops_ratio`` (honest FLOPs of those tokens over the full model's:
:func:`adainfer.decide.costs.generation_costs`) and ``gen_flops_ratio_with_prefill`` (the whole
generation, prompt included),
``gen_tokens_per_s_full`` / ``gen_tokens_per_s``; and a sample of the answers
(:data:`SAMPLE` prompts) for the ``generations.jsonl`` artifact.

A threshold certified on first tokens says little about whole answers: with ``risk.answers``
(``equal`` or ``metric``) the threshold is set again, by Learn-then-Test on answers generated
for the calibration prompts (:func:`calibrate_answers`), before the test answers are generated;
what it chose and why is logged as ``gen_risk_*`` (:class:`adainfer.decide.risk.Calibration`).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from adainfer.decide.costs import generation_costs, read_prices
from adainfer.decide.policies import ExitPolicy
from adainfer.decide.policies.base import NeverExit
from adainfer.decide.records import LayerRecords
from adainfer.decide.risk import (
    Calibration,
    RiskLimit,
    candidate_thresholds,
    certify,
    check_calibratable,
    risk_upper_bound,
)
from adainfer.engine import EarlyExitEngine, Generation, generate
from adainfer.engine.timing import synchronize
from adainfer.errors import AdaInferError
from adainfer.llm.batching import on_trainer_device, one_device, probe_trainer
from adainfer.llm.lenses import Lens
from adainfer.tasks.answer_match import exact_match, exact_match_strict, f1
from adainfer.tasks.base import Example

log = logging.getLogger(__name__)

STOP = ("\n",)  # an answer ends where the template's next line starts
SAMPLE = 20  # prompts whose answers go into generations.jsonl


def check_lengths(task: str, input_ids: list[list[int]], max_new: int, context: int) -> None:
    """Refuse test prompts too long to take ``max_new`` more tokens within the model's context
    (``generate`` checks it too, but only after the policy is fitted and the run opened)."""
    longest = max(len(ids) for ids in input_ids)
    if longest + max_new > context:
        raise AdaInferError(
            f"task {task!r}: a test prompt is {longest} tokens, and with task.max_new_tokens="
            f"{max_new} it needs {longest + max_new} positions, more than the model's context "
            f"of {context}",
            f"lower task.max_new_tokens (at most {max(context - longest, 0)}), or shorten the "
            "prompts (fewer shots, or context_length)",
        )


def _place(loaded: Any, trainer_kwargs: dict[str, Any] | None) -> None:
    """Put the model where an LLM pass of the job runs (see timing.engine_metrics)."""
    if trainer_kwargs is not None:
        on_trainer_device(loaded, probe_trainer(one_device(trainer_kwargs)))


def _timed(
    engine: EarlyExitEngine, ids: list[list[int]], max_new: int, kv_fill: str, batch_size: int
) -> tuple[Generation, float]:
    """``generate`` and its wall seconds, after a two-token warm-up on the first prompt (so
    neither run pays for the other's first calls)."""
    generate(engine, ids[:1], min(2, max_new), stop=STOP, kv_fill=kv_fill, batch_size=1)
    synchronize(engine.device)
    start = time.perf_counter()
    out = generate(engine, ids, max_new, stop=STOP, kv_fill=kv_fill, batch_size=batch_size)
    synchronize(engine.device)
    return out, time.perf_counter() - start


def answer_scores(
    texts: Sequence[str], examples: Sequence[Example], squad: bool
) -> dict[str, float]:
    """Mean exact match (and SQuAD's F1 with ``squad``) of ``texts`` against the golds."""
    pairs = list(zip(texts, examples, strict=True))
    if not squad:
        return {"em": float(np.mean([exact_match_strict(t, e.golds) for t, e in pairs]))}
    return {
        "em": float(np.mean([exact_match(t, e.golds) for t, e in pairs])),
        "f1": float(np.mean([f1(t, e.golds) for t, e in pairs])),
    }


def answer_losses(
    early: Sequence[str],
    full: Sequence[str],
    examples: Sequence[Example],
    answers: str,
    loss: str,
    squad: bool,
) -> np.ndarray:
    """ℓ per generated answer. ``answers="equal"``: the answer is not the full model's (0/1).
    ``"metric"``: by exact match against the golds (SQuAD's normalized, Function Vectors' as
    written), ``loss="flip"``: 1[full right, early wrong]; ``"drop"``: 1[full right] −
    1[early right] (:mod:`adainfer.decide.risk`)."""
    if answers == "equal":
        return np.array([a != b for a, b in zip(early, full, strict=True)], dtype=np.int64)
    right = exact_match if squad else exact_match_strict
    full_right = np.array([right(t, e.golds) for t, e in zip(full, examples, strict=True)])
    early_right = np.array([right(t, e.golds) for t, e in zip(early, examples, strict=True)])
    if loss == "drop":
        return full_right.astype(np.int64) - early_right.astype(np.int64)
    return (full_right & ~early_right).astype(np.int64)


def answer_candidates(policy: ExitPolicy, train: LayerRecords, fine: int, grid: int) -> np.ndarray:
    """At most ``grid`` thresholds for whole answers, most cautious first: the first-token
    candidates (:func:`adainfer.decide.risk.candidate_thresholds`, ``fine`` quantiles of the train
    scores) taken at geometrically spaced ranks 1, 2, 4, ...: each costs a generation of the
    calibration split, and an answer of several tokens changes once any of them exits early, so
    the cautious end, where the certified thresholds lie, is sampled densely. Fixed on ``train``
    alone, as fixed-sequence testing requires."""
    finite = candidate_thresholds(policy, train, fine)[1:]
    if finite.size <= grid:
        return finite
    ranks = np.unique(np.round(np.geomspace(1, finite.size, grid)).astype(int)) - 1
    return finite[ranks]


def calibrate_answers(
    loaded: Any,
    policy: ExitPolicy,
    probe: Lens | None,
    train: LayerRecords,
    input_ids: list[list[int]],
    examples: Sequence[Example],
    limit: RiskLimit,
    answers: str,
    grid: int,
    generation: tuple[int, str, int, bool],
    trainer_kwargs: dict[str, Any] | None = None,
) -> Calibration:
    """Set ``policy``'s threshold so that, w.p. ≥ 1 − δ, the generated answers lose at most ε
    (``answers``: see :func:`answer_losses`): Learn-then-Test on whole answers, generated for
    the calibration prompts ``input_ids`` (their instances ``examples``) at each candidate
    threshold, as :func:`adainfer.decide.risk.certify` walks them; at most ``grid`` candidates
    (:func:`answer_candidates`), each one generation of the calibration split.
    ``generation``: (max_new_tokens, kv_fill, batch_size, squad), as the test's."""
    check_calibratable(policy)
    if not input_ids:
        raise AdaInferError(
            f"risk.answers={answers} calibrates on generated answers, and the calibration "
            "split is empty",
            "set task.n_calibration (held-out instances, e.g. 300)",
        )
    _place(loaded, trainer_kwargs)
    max_new, kv_fill, batch_size, squad = generation
    args = (input_ids, max_new, STOP, kv_fill, batch_size)
    full = generate(EarlyExitEngine(loaded, NeverExit(), probe), *args).text
    # the first token's loss (flip or drop) for the metric; equal is 0/1 under any bound
    tested = replace(limit, loss="flip" if answers == "equal" else limit.loss)

    def losses_at(threshold: float) -> np.ndarray:
        early = generate(EarlyExitEngine(loaded, policy, probe), *args).text
        values = answer_losses(early, full, examples, answers, tested.loss, squad)
        log.info(
            "risk.answers=%s: threshold %.4g, mean loss %.4f", answers, threshold, values.mean()
        )
        return values

    prices = read_prices(loaded.config, probe)
    candidates = answer_candidates(policy, train, limit.grid, grid)
    chosen, values, p_chosen, rejected = certify(
        policy, train, tested, losses_at, prices, candidates
    )
    values = np.zeros(len(input_ids), dtype=np.int64) if values is None else values
    return Calibration(
        threshold=chosen,
        losses=int(values.sum()),
        n=len(input_ids),
        p_value=p_chosen,
        upper_bound=risk_upper_bound(values, tested),
        cal_drop=float(values.mean()),
        tested=rejected,
        certified=math.isfinite(chosen),
    )


def generation_metrics(
    loaded: Any,
    policy: ExitPolicy,
    probe: Lens | None,
    input_ids: list[list[int]],
    examples: Sequence[Example],
    max_new_tokens: int,
    kv_fill: str,
    batch_size: int,
    squad: bool,
    trainer_kwargs: dict[str, Any] | None = None,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Generate the answers of ``input_ids`` with the full model and with the fitted ``policy``;
    return the ``gen_*`` metrics and the first :data:`SAMPLE` prompts' answers.

    ``examples``: the prompts' instances, in the same order (their gold answers); ``squad``:
    score with SQuAD's exact match and F1, else Function Vectors' exact match.
    """
    if len(examples) != len(input_ids):
        raise ValueError(f"{len(examples)} examples for {len(input_ids)} prompts")
    _place(loaded, trainer_kwargs)
    args = (input_ids, max_new_tokens, kv_fill, batch_size)
    full, full_s = _timed(EarlyExitEngine(loaded, NeverExit(), probe), *args)
    early, early_s = _timed(EarlyExitEngine(loaded, policy, probe), *args)
    metrics = {f"gen_{k}_full": v for k, v in answer_scores(full.text, examples, squad).items()}
    metrics |= {f"gen_{k}": v for k, v in answer_scores(early.text, examples, squad).items()}
    same = [a == b for a, b in zip(early.text, full.text, strict=True)]
    metrics["gen_equal_full"] = float(np.mean(same))
    later = np.concatenate([w.exit_layer[1:] for w in early.work])
    if later.size:  # every answer one token long: no token was read early
        metrics["gen_exit_layer_mean"] = float(later.mean())
    cost = generation_costs(early, loaded.config, policy, probe)
    metrics["gen_flops_ratio"] = cost.flops_ratio
    metrics["gen_flops_ratio_with_prefill"] = cost.flops_ratio_with_prefill
    metrics["gen_tokens_per_s_full"] = sum(map(len, full.tokens)) / full_s
    metrics["gen_tokens_per_s"] = sum(map(len, early.tokens)) / early_s
    sample = [
        {
            "prompt_tail": loaded.tokenizer.decode(input_ids[i][-48:]),
            "gold": list(examples[i].golds),
            "full": full.text[i],
            "early_exit": early.text[i],
            "exit_layers": early.work[i].exit_layer.tolist(),
            "finish_full": full.finish[i],
            "finish": early.finish[i],
        }
        for i in range(min(SAMPLE, len(input_ids)))
    ]
    return metrics, sample
