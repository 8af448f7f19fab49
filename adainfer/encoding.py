"""Prompts to token ids, and the gold token each answer is scored against."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from adainfer.errors import AdaInferError
from adainfer.tasks.prompts import Prompt

log = logging.getLogger(__name__)


@dataclass
class EncodedPrompts:
    input_ids: list[list[int]]
    gold: np.ndarray  # first token of " " + answer, as the tokenizer splits prompt + answer
    seq_len: np.ndarray


def gold_token(tokenizer, prompt_ids: list[int], prompt: Prompt) -> int:
    """The first token the model must produce after the prompt to start `` answer``.

    Prompt and answer are tokenized together and the prompt's tokens removed, so tokenizers
    that would add a prefix space to a lone answer (SentencePiece) are handled like BPE ones.
    """
    full = tokenizer(prompt.text + " " + prompt.answer).input_ids
    if full[: len(prompt_ids)] == prompt_ids and len(full) > len(prompt_ids):
        return full[len(prompt_ids)]
    alone = tokenizer(" " + prompt.answer, add_special_tokens=False).input_ids
    if not alone:
        raise AdaInferError(
            f"the answer {prompt.answer!r} tokenizes to nothing, so there is no gold token",
            "fix or remove that instance in the task's data",
        )
    return alone[0]


def encode_prompts(tokenizer, prompts: list[Prompt], max_length: int) -> EncodedPrompts:
    """Token ids of each prompt (with the tokenizer's special tokens) and its gold token."""
    ids, gold = [], []
    for prompt in prompts:
        if not prompt.answer.strip():
            raise AdaInferError(
                f"the answer {prompt.answer!r} tokenizes to nothing, so there is no gold token",
                "fix or remove that instance in the task's data",
            )
        prompt_ids = tokenizer(prompt.text).input_ids
        if len(prompt_ids) > max_length:
            raise AdaInferError(
                f"a {prompt.shots}-shot prompt is {len(prompt_ids)} tokens, longer than the "
                f"model's context of {max_length}",
                "lower shots, or use a model with a longer context",
            )
        ids.append(prompt_ids)
        gold.append(gold_token(tokenizer, prompt_ids, prompt))
    blank = sum(not tokenizer.decode([g]).strip() for g in gold)
    if blank:
        log.warning(
            "%d of %d answers start with a whitespace-only token under this tokenizer "
            "(e.g. a space before a digit); they are scored on that token",
            blank,
            len(gold),
        )
    return EncodedPrompts(ids, np.array(gold, dtype=np.int64), np.array([len(i) for i in ids]))
