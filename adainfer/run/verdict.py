"""The one line a job ends with: what the exits saved, at what accuracy drop, and what was
guaranteed (and the same for generated answers)."""

from __future__ import annotations

from adainfer.decide.risk import RiskLimit


def generation_verdict(metrics: dict[str, float], limit: RiskLimit | None, answers) -> str:
    """One line on the generated answers: what early exit saved per token, what it changed,
    and what was guaranteed of whole answers."""
    saved = 1.0 - metrics["gen_flops_ratio"]
    line = (
        f"generation: {'saved' if saved >= 0 else 'cost'} {abs(saved):.1%} "
        f"{'of' if saved >= 0 else 'more than'} the full model's FLOPs per generated token "
        f"(honest, after the first), {metrics['gen_equal_full']:.1%} of the answers equal to "
        f"the full model's, exact match {metrics['gen_em_full']:.3f} -> {metrics['gen_em']:.3f}"
    )
    if limit is None or answers is None:
        return line + "; no guarantee on whole answers asked (set risk.answers for one)"
    what = (
        "answers differing from the full model's" if answers == "equal" else "a drop of exact match"
    )
    if not metrics.get("gen_risk_certified"):
        return line + (
            f"; nothing could be certified at {what} <= {100 * limit.epsilon:g}% "
            f"w.p. >= {1 - limit.delta:g} on {int(metrics['gen_risk_n'])} calibration answers, "
            "so it never exits early"
        )
    return line + (
        f"; guaranteed: {what} <= {100 * limit.epsilon:g}% w.p. >= {1 - limit.delta:g} "
        f"({int(metrics['gen_risk_n'])} calibration answers)"
    )


def verdict(metrics: dict[str, float], limit: RiskLimit | None, chosen: str | None = None) -> str:
    """One line: what the exits saved (honest FLOPs: probes, translators and the policy's
    decisions counted) at what accuracy drop, and what was guaranteed; with ``chosen`` (the
    candidate ``classifier=auto`` chose), which one and how; and what an odd guarantee means
    (:func:`caveats`)."""
    saved = 1.0 - metrics["honest_flops_ratio"]
    line = (
        f"{'saved' if saved >= 0 else 'cost'} {abs(saved):.1%} "
        f"{'of' if saved >= 0 else 'more than'} the full model's FLOPs "
        f"(honest FLOPs ratio {metrics['honest_flops_ratio']:.3f}; Eq. 2: "
        f"{metrics['flops_ratio']:.3f}) at an accuracy drop of {100 * metrics['acc_drop']:+.1f} "
        f"points on the test split"
    )
    if chosen is not None:
        line = _chosen(metrics, limit, chosen) + line
        if metrics.get("auto_full_model"):
            return line
    if limit is None:
        return line + "; no guarantee asked (set risk.epsilon for one)"
    if not metrics.get("risk_certified"):
        return line + (
            f"; nothing could be certified at a drop <= {100 * limit.epsilon:g} points "
            f"(risk.epsilon) w.p. >= {1 - limit.delta:g} on {int(metrics['risk_n'])} calibration "
            "instances, so it never exits early: more calibration instances "
            "(task.n_calibration) or a larger risk.epsilon can"
        )
    line += (
        f"; guaranteed: a drop <= {100 * limit.epsilon:g} points w.p. >= {1 - limit.delta:g} "
        f"({limit.bound} bound on the {limit.loss} loss, {int(metrics['risk_n'])} calibration "
        "instances)"
    )
    return line + "".join(f"; {note}" for note in caveats(metrics, limit))


def _chosen(metrics: dict[str, float], limit: RiskLimit | None, chosen: str) -> str:
    """The head of an auto job's line: what was chosen among how many, and why."""
    k = int(metrics.get("auto_candidates", 0))
    if metrics.get("auto_full_model"):
        eps = f"{100 * limit.epsilon:g}" if limit is not None else "?"
        return (
            f"classifier=auto ran the full model: none of its {k} candidates was certified "
            f"below the full model's cost at a drop <= {eps} points w.p. >= "
            f"{1 - limit.delta:g} on {int(metrics.get('risk_n', 0))} calibration instances, so "
            "exits cannot pay here; "
        )
    return (
        f"classifier=auto chose {chosen} (of {k} candidates, each certified at "
        f"delta/{k}; estimated honest FLOPs ratio on calibration "
        f"{metrics.get('auto_cal_cost', float('nan')):.3f}): "
    )


def caveats(metrics: dict[str, float], limit: RiskLimit) -> list[str]:
    """What a certified guarantee means where it is odd: the exits answer one constant token
    (or the full model is no better than a constant answer), or the test drop exceeds ε."""
    notes = []
    early = metrics.get("early_exit_share", 0.0)
    if early > 0 and metrics.get("exit_answers_distinct") == 1:
        notes.append(
            f"note: every early exit ({early:.0%} of the test prompts) gives the same token, "
            "whatever the prompt: the model's own answer is never read there, and the "
            "guarantee holds only because the full model does no better than that constant"
        )
    elif metrics.get("acc_full", 1.0) <= metrics.get("acc_constant", 0.0):
        notes.append(
            f"note: the full model (accuracy {metrics['acc_full']:.3f}) is no better than "
            f"always giving the most common answer ({metrics['acc_constant']:.3f}): "
            "a guarantee against it promises little"
        )
    if metrics.get("acc_drop", 0.0) > limit.epsilon:
        se = metrics.get("acc_drop_se", float("nan"))
        notes.append(
            f"note: the test drop ({100 * metrics['acc_drop']:.1f} points) exceeds "
            f"{100 * limit.epsilon:g}: the guarantee bounds the drop over the population the "
            f"calibration split is drawn from, w.p. >= {1 - limit.delta:g}, and one test split "
            f"of {int(metrics.get('test_instances', 0))} instances has its own noise "
            f"(standard error {100 * se:.1f} points)"
        )
    return notes
