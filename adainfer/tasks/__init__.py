"""Tasks are data: where examples come from, how they split, how prompts are rendered."""

from adainfer.tasks.base import Example, Splits, Task
from adainfer.tasks.classification import AGNewsTask, SST2Task
from adainfer.tasks.function_vectors import FunctionVectorsTask
from adainfer.tasks.prompts import Prompt, PromptTemplate, build_prompts
from adainfer.tasks.qa import CommonsenseQATask, MMLUTask, SquadTask
from adainfer.tasks.rules import RuleTask
from adainfer.tasks.suite import Suite, function_vectors_suite

__all__ = [
    "AGNewsTask",
    "CommonsenseQATask",
    "MMLUTask",
    "SST2Task",
    "SquadTask",
    "Example",
    "FunctionVectorsTask",
    "Prompt",
    "PromptTemplate",
    "RuleTask",
    "Splits",
    "Suite",
    "Task",
    "build_prompts",
    "function_vectors_suite",
]
