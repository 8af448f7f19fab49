"""Prompts to token ids, and the gold token each answer is scored against."""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from adainfer.errors import AdaInferError
from adainfer.tasks.base import Example
from adainfer.tasks.prompts import Prompt

log = logging.getLogger(__name__)


@dataclass
class EncodedPrompts:
    input_ids: list[list[int]]
    gold: np.ndarray  # first token of " " + answer, as the tokenizer splits prompt + answer
    seq_len: np.ndarray
    truncated: int = 0  # prompts that lost demonstrations to fit the context
    dropped_demos: int = 0  # demonstrations dropped in all


def _nothing(answer: str) -> AdaInferError:
    return AdaInferError(
        f"the answer {answer!r} tokenizes to nothing, so there is no gold token",
        "fix or remove that instance in the task's data",
    )


def gold_token(tokenizer, prompt_ids: list[int], prompt: Prompt) -> int:
    """The first token the model must produce after the prompt to start `` answer``.

    Prompt and answer are tokenized together and the prompt's tokens removed, so tokenizers
    that would add a prefix space to a lone answer (SentencePiece) are handled like BPE ones.
    """
    if not prompt.answer.strip():
        raise _nothing(prompt.answer)
    full = tokenizer(prompt.text + " " + prompt.answer).input_ids
    if full[: len(prompt_ids)] == prompt_ids and len(full) > len(prompt_ids):
        return full[len(prompt_ids)]
    alone = tokenizer(" " + prompt.answer, add_special_tokens=False).input_ids
    if not alone:
        raise _nothing(prompt.answer)
    return alone[0]


def _fit(tokenizer, prompt: Prompt, max_length: int) -> tuple[Prompt, list[int]]:
    """Drop demonstrations, oldest first, until the prompt fits ``max_length`` tokens."""
    ids = tokenizer(prompt.text).input_ids
    while len(ids) > max_length and prompt.demos:
        prompt = prompt.drop_first_demo()
        ids = tokenizer(prompt.text).input_ids
    if len(ids) > max_length:
        raise AdaInferError(
            f"the query {prompt.query.input[:60]!r}... alone is {len(ids)} tokens, longer than "
            f"the context of {max_length}",
            "raise context_length (up to the model's), or shorten/remove that instance",
        )
    return prompt, ids


def encode_prompts(tokenizer, prompts: list[Prompt], max_length: int) -> EncodedPrompts:
    """Token ids of each prompt (with the tokenizer's special tokens) and its gold token.

    A prompt longer than ``max_length`` loses demonstrations until it fits; how many prompts
    and demonstrations that cost is counted (and logged by the pipeline).
    """
    ids, gold, truncated, dropped = [], [], 0, 0
    for prompt in prompts:
        fitted, prompt_ids = _fit(tokenizer, prompt, max_length)
        if fitted.shots < prompt.shots:
            truncated += 1
            dropped += prompt.shots - fitted.shots
        ids.append(prompt_ids)
        gold.append(gold_token(tokenizer, prompt_ids, fitted))
    if truncated:
        log.warning(
            "%d of %d prompts were longer than the context of %d tokens: %d demonstrations "
            "dropped to fit",
            truncated,
            len(prompts),
            max_length,
            dropped,
        )
    blank = sum(not tokenizer.decode([g]).strip() for g in gold)
    if blank:
        log.warning(
            "%d of %d answers start with a whitespace-only token under this tokenizer "
            "(e.g. a space before a digit); they are scored on that token",
            blank,
            len(gold),
        )
    lengths = np.array([len(i) for i in ids])
    return EncodedPrompts(ids, np.array(gold, dtype=np.int64), lengths, truncated, dropped)


def check_label_tokens(tokenizer, labels: list[str], task: str) -> None:
    """Stop when two label words of a closed answer set share their first token.

    Scoring is on the first token only, so such labels could not be told apart.
    """
    probe = Prompt(Example("x", ""))
    prompt_ids = tokenizer(probe.text).input_ids
    by_token: dict[int, list[str]] = defaultdict(list)
    for label in labels:
        token = gold_token(tokenizer, prompt_ids, Prompt(Example("x", label)))
        by_token[token].append(label)
    clashes = {tokenizer.decode([t]): group for t, group in by_token.items() if len(group) > 1}
    if clashes:
        described = "; ".join(f"{group} all start with {tok!r}" for tok, group in clashes.items())
        raise AdaInferError(
            f"task {task!r}: label words share their first token under this tokenizer "
            f"({described}), so first-token accuracy cannot tell them apart",
            "use distinct label words (e.g. task.label_words=...) or another model",
        )
