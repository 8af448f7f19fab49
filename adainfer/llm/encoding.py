"""Prompts to token ids, and the gold token each answer is scored against."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from adainfer.errors import AdaInferError
from adainfer.tasks.base import Example
from adainfer.tasks.prompts import Prompt

log = logging.getLogger(__name__)


@dataclass
class EncodedPrompts:
    input_ids: list[list[int]]
    gold: np.ndarray  # first token of the answer that carries text (see answer_start)
    seq_len: np.ndarray
    truncated: int = 0  # prompts that lost demonstrations to fit the context
    dropped_demos: int = 0  # demonstrations dropped in all
    space_prefixed: int = 0  # prompts that end with their answer's leading whitespace token(s)
    # a task with fixed labels: each label's gold token (label_tokens), what a label-row read
    # reads; None for free answers
    label_ids: np.ndarray | None = None


def _nothing(answer: str) -> AdaInferError:
    return AdaInferError(
        f"the answer {answer!r} tokenizes to nothing, so there is no gold token",
        "fix or remove that instance in the task's data",
    )


def answer_start(tokenizer, prompt_ids: list[int], prompt: Prompt) -> tuple[list[int], int]:
    """How `` answer`` starts after the prompt: its leading whitespace-only tokens, and the
    gold token (the first token that carries answer text).

    Prompt and answer are tokenized together and the prompt's tokens removed, so tokenizers
    that would add a prefix space to a lone answer (SentencePiece) are handled like BPE ones.
    Tokenizers that split `` 1998`` into ``" "``, ``"1"``, ... (SmolLM2, Gemma-3, Llama 2)
    would otherwise make a bare space the gold token, which every layer predicts easily; the
    whitespace tokens go into the model's input instead (see :func:`encode_prompts`).
    """
    if not prompt.answer.strip():
        raise _nothing(prompt.answer)
    full = tokenizer(prompt.text + " " + prompt.answer).input_ids
    if full[: len(prompt_ids)] == prompt_ids and len(full) > len(prompt_ids):
        rest = full[len(prompt_ids) :]
    else:
        rest = tokenizer(" " + prompt.answer, add_special_tokens=False).input_ids
    for i, token in enumerate(rest):
        if tokenizer.decode([token]).strip():
            return rest[:i], token
    raise _nothing(prompt.answer)


def gold_token(tokenizer, prompt_ids: list[int], prompt: Prompt) -> int:
    """The first token of `` answer`` that carries text: what the model must produce."""
    return answer_start(tokenizer, prompt_ids, prompt)[1]


@dataclass(frozen=True)
class _Fitted:
    prompt: Prompt
    input_ids: list[int]  # the prompt's ids, then the answer's leading whitespace tokens
    gold: int
    space: int  # how many whitespace tokens were moved from the answer into the input


def _fit(tokenizer, prompt: Prompt, max_length: int) -> _Fitted:
    """The prompt with as many of its most recent demonstrations as fit ``max_length`` tokens
    (the oldest are dropped first), with its gold token.

    The length grows with every demonstration kept, so the number kept is searched for, not
    stepped down to: a guess from character counts (at the query's own tokens per character)
    is bracketed by a galloping search and the bracket closed by bisection. The guess sets
    only the speed (a few tokenizations near ``max_length`` tokens instead of one per dropped
    demonstration), never the result: the most demonstrations that fit.
    """
    tried: dict[int, tuple[int, _Fitted | None]] = {}

    def fits(kept: int) -> bool:
        if kept not in tried:
            candidate = prompt.keep_last_demos(kept)
            ids = tokenizer(candidate.text).input_ids
            fitted = None
            if len(ids) <= max_length:  # else too long already: no need to see the answer
                space, gold = answer_start(tokenizer, ids, candidate)
                fitted = _Fitted(candidate, ids + space, gold, len(space))
            length = len(ids) if fitted is None else len(fitted.input_ids)
            tried[kept] = (length, fitted if length <= max_length else None)
        return tried[kept][1] is not None

    if not fits(0):
        raise AdaInferError(
            f"the query {prompt.query.input[:60]!r}... alone is {tried[0][0]} tokens, longer "
            f"than the context of {max_length}",
            "raise context_length (up to the model's), or shorten/remove that instance",
        )
    query = prompt.keep_last_demos(0).text
    per_char = tried[0][0] / max(len(query), 1)
    chars = len(query)
    guess = 0
    for demo in reversed(prompt.demos):  # the most recent first
        chars += len(prompt.template.render([demo], prompt.query)) - len(query)
        if chars * per_char > max_length:
            break
        guess += 1
    fitted = tried[_most_that_fit(fits, prompt.shots, guess)][1]
    assert fitted is not None
    return fitted


def _most_that_fit(fits: Callable[[int], bool], top: int, guess: int) -> int:
    """The largest k in 0..top with ``fits(k)``, where fits(0) holds and fits is monotone
    (true up to some k, false after), found outward from ``guess``."""
    good, bad = 0, top + 1  # fits(good) holds; every k >= bad does not fit
    step, first = 1, min(guess, top)
    if fits(first):
        good = first
        while good < top:  # gallop up
            probe = min(good + step, top)
            if not fits(probe):
                bad = probe
                break
            good, step = probe, step * 2
    else:
        bad = first
        while bad - step > good:  # gallop down
            probe = bad - step
            if fits(probe):
                good = probe
                break
            bad, step = probe, step * 2
    while bad - good > 1:  # bisect
        mid = (good + bad) // 2
        if fits(mid):
            good = mid
        else:
            bad = mid
    return good


def encode_prompts(tokenizer, prompts: list[Prompt], max_length: int) -> EncodedPrompts:
    """Token ids of each prompt (with the tokenizer's special tokens) and its gold token.

    An answer whose first token(s) after the prompt are whitespace only (`` 1998`` is
    ``" "``, ``"1"``, ... for SmolLM2 and Gemma-3) has those tokens appended to its prompt's
    ids, and is scored on its first token with text. A prompt longer than ``max_length``
    loses demonstrations, oldest first, until it fits. Both are counted (and logged by the
    pipeline).
    """
    ids, gold, truncated, dropped, spaced = [], [], 0, 0, 0
    for prompt in tqdm(prompts, desc="encoding prompts", unit="prompt", delay=2):
        fitted = _fit(tokenizer, prompt, max_length)
        if fitted.prompt.shots < prompt.shots:
            truncated += 1
            dropped += prompt.shots - fitted.prompt.shots
        spaced += fitted.space > 0
        ids.append(fitted.input_ids)
        gold.append(fitted.gold)
    if truncated:
        log.warning(
            "%d of %d prompts were longer than the context of %d tokens: %d demonstrations "
            "dropped to fit",
            truncated,
            len(prompts),
            max_length,
            dropped,
        )
    if spaced:
        log.info(
            "%d of %d answers start with whitespace-only token(s) under this tokenizer (e.g. "
            "the space before a digit): those tokens end the prompt, and the answer's first "
            "token with text is the gold token",
            spaced,
            len(prompts),
        )
    lengths = np.array([len(i) for i in ids])
    gold_ids = np.array(gold, dtype=np.int64)
    return EncodedPrompts(ids, gold_ids, lengths, truncated, dropped, spaced)


def label_tokens(tokenizer, labels: list[str]) -> list[int]:
    """Each label's gold token (its first token with text after ``A:``), in the labels' order."""
    prompt_ids = tokenizer(Prompt(Example("x", "")).text).input_ids
    return [gold_token(tokenizer, prompt_ids, Prompt(Example("x", label))) for label in labels]


def check_label_tokens(tokenizer, labels: list[str], task: str) -> None:
    """Stop when two label words of a closed answer set share their first token.

    Scoring is on the first token only, so such labels could not be told apart.
    """
    by_token: dict[int, list[str]] = defaultdict(list)
    for label, token in zip(labels, label_tokens(tokenizer, labels), strict=True):
        by_token[token].append(label)
    clashes = {tokenizer.decode([t]): group for t, group in by_token.items() if len(group) > 1}
    if clashes:
        described = "; ".join(f"{group} all start with {tok!r}" for tok, group in clashes.items())
        raise AdaInferError(
            f"task {task!r}: label words share their first token under this tokenizer "
            f"({described}), so first-token accuracy cannot tell them apart",
            "use distinct label words (e.g. task.label_words=...) or another model",
        )
