"""Prompt lengths of a grid, tokenized as a run would, without running the LLM.

For each model, task and shot count: the train and test prompts ``python run.py`` would build
(same seed, sampling and context fitting), their count, their tokens (as given and padded to
the longest of each batch of ``--batch-size``, with the prompts sorted by length as the LLM
pass batches them: what it computes), the longest prompt,
the model's context, and how many demonstrations were dropped to fit it, from how many prompts.
Takes seconds per setting: a way to see what a grid will cost before running it.

    python scripts/prompt_lengths.py --models smollm2_135m gemma3_270m \\
        --tasks sst2 ag_news rules --shots 0 5 10 15 20
"""

from __future__ import annotations

import argparse

import pandas as pd
from common import compose_config, use_shared_data


def lengths(model: str, task: str, shots: int, n: int, batch: int, loaded=None):
    """One row of the table, and the loaded model (to reuse for the next setting)."""
    from adainfer.compose.inputs import build, load_inputs
    from adainfer.extract.extractor import prepare
    from adainfer.llm.batching import length_order

    cfg = compose_config(
        [
            f"model={model}",
            f"task={task}",
            f"shots={shots}",
            f"task.n_train={n}",
            f"task.n_test={n}",
        ]
    )
    inputs = load_inputs(cfg)
    loaded = loaded or build(cfg.model, "model").load()
    sizes, padded, dropped, truncated = [], 0, 0, 0
    for name, member in inputs.members.items():
        for encoded in prepare(
            member, inputs.splits[name], loaded, shots, cfg.seed, cfg.context_length
        ):
            size = [len(encoded.input_ids[i]) for i in length_order(encoded.input_ids)]
            sizes += size
            padded += sum(
                max(size[i : i + batch]) * len(size[i : i + batch])
                for i in range(0, len(size), batch)
            )
            dropped += encoded.dropped_demos
            truncated += encoded.truncated
    row = {
        "model": model,
        "task": task,
        "shots": shots,
        "prompts": len(sizes),
        "tokens": sum(sizes),
        "padded_tokens": padded,
        "longest": max(sizes),
        "context": loaded.max_length,
        "demos_dropped": dropped,
        "prompts_truncated": truncated,
    }
    return row, loaded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["smollm2_135m"])
    parser.add_argument("--tasks", nargs="+", default=["sst2"])
    parser.add_argument("--shots", type=int, nargs="+", default=[0, 5, 10, 15, 20])
    parser.add_argument("--n", type=int, default=100, help="task.n_train and task.n_test")
    parser.add_argument("--batch-size", type=int, default=8, help="as the config's batch_size")
    parser.add_argument("--csv", default=None, help="also write the table here")
    args = parser.parse_args()
    use_shared_data()
    rows = []
    for model in args.models:
        loaded = None
        for task in args.tasks:
            for shots in args.shots:
                row, loaded = lengths(model, task, shots, args.n, args.batch_size, loaded)
                rows.append(row)
    table = pd.DataFrame(rows)
    print(table.to_markdown(index=False))
    if args.csv:
        table.to_csv(args.csv, index=False)


if __name__ == "__main__":
    main()
