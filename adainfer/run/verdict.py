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


def verdict(metrics: dict[str, float], limit: RiskLimit | None) -> str:
    """One line: what the exits saved (honest FLOPs: probes, translators and the policy's
    decisions counted) at what accuracy drop, and what was guaranteed."""
    saved = 1.0 - metrics["honest_flops_ratio"]
    line = (
        f"{'saved' if saved >= 0 else 'cost'} {abs(saved):.1%} "
        f"{'of' if saved >= 0 else 'more than'} the full model's FLOPs "
        f"(honest FLOPs ratio {metrics['honest_flops_ratio']:.3f}; Eq. 2: "
        f"{metrics['flops_ratio']:.3f}) at an accuracy drop of {100 * metrics['acc_drop']:+.1f} "
        f"points on the test split"
    )
    if limit is None:
        return line + "; no guarantee asked (set risk.epsilon for one)"
    if not metrics.get("risk_certified"):
        return line + (
            f"; nothing could be certified at a drop <= {100 * limit.epsilon:g} points "
            f"(risk.epsilon) w.p. >= {1 - limit.delta:g} on {int(metrics['risk_n'])} calibration "
            "instances, so it never exits early: more calibration instances "
            "(task.n_calibration) or a larger risk.epsilon can"
        )
    return line + (
        f"; guaranteed: a drop <= {100 * limit.epsilon:g} points w.p. >= {1 - limit.delta:g} "
        f"({limit.bound} bound on the {limit.loss} loss, {int(metrics['risk_n'])} calibration "
        "instances)"
    )
