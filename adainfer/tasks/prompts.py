"""The paper's few-shot prompt: ``Q: {x}\\nA: {y}\\n\\n`` per demonstration, then ``Q: {x}\\nA:``.

Demonstrations are drawn from the train split with a seeded generator and never contain the
instance being asked (nor any example with the same input).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

from adainfer.errors import AdaInferError
from adainfer.tasks.base import Example


@dataclass(frozen=True)
class PromptTemplate:
    demo: str = "Q: {x}\nA: {y}\n\n"
    query: str = "Q: {x}\nA:"

    def render(self, demos: tuple[Example, ...] | list[Example], query: Example) -> str:
        head = "".join(self.demo.format(x=d.input, y=d.output) for d in demos)
        return head + self.query.format(x=query.input)


@dataclass(frozen=True)
class Prompt:
    """A query with its demonstrations; the text is rendered from them on demand."""

    query: Example
    demos: tuple[Example, ...] = ()
    template: PromptTemplate = PromptTemplate()

    @property
    def text(self) -> str:
        return self.template.render(self.demos, self.query)

    @property
    def answer(self) -> str:
        return self.query.output

    @property
    def shots(self) -> int:
        return len(self.demos)

    def keep_last_demos(self, kept: int) -> Prompt:
        """The prompt with only its ``kept`` most recent demonstrations."""
        return replace(self, demos=self.demos[len(self.demos) - kept :])


def build_prompts(
    examples: list[Example],
    pool: list[Example],
    shots: int,
    seed: int,
    template: PromptTemplate | None = None,
) -> list[Prompt]:
    """One prompt per example with ``shots`` demonstrations sampled from ``pool``."""
    template = template or PromptTemplate()
    if shots < 0:
        raise AdaInferError(f"shots={shots} is negative", "use shots=0, 5, 10, 15 or 20")
    rng = random.Random(seed)
    return [Prompt(ex, tuple(_demos(pool, ex, shots, rng)), template) for ex in examples]


def _demos(pool: list[Example], query: Example, shots: int, rng: random.Random) -> list[Example]:
    if shots == 0:
        return []
    # Draw a few spares so that dropping copies of the query rarely needs a second pass.
    drawn = [pool[i] for i in rng.sample(range(len(pool)), min(len(pool), shots + 4))]
    demos = [d for d in drawn if d.input != query.input][:shots]
    if len(demos) < shots:
        candidates = [d for d in pool if d.input != query.input]
        if shots > len(candidates):
            raise AdaInferError(
                f"shots={shots} but the train split has only {len(candidates)} usable "
                "demonstrations",
                "lower shots, or raise task.n_train",
            )
        demos = rng.sample(candidates, shots)
    return demos
