"""Question answering: MMLU and CommonsenseQA (multiple choice), SQuAD (extractive).

Multiple choice renders the question, then one line per choice (``A. ...``, ``B. ...``), and the
answer is the letter, so a 5-shot MMLU demonstration reads::

    Q: <question>
    A. <choice>
    B. <choice>
    C. <choice>
    D. <choice>
    A: C

SQuAD's input is the context, a newline, then the question; its answer is the first annotator
answer. Every split is shuffled with ``split_seed`` before the ``n_train`` / ``n_test`` caps,
so a cap samples across MMLU subjects and SQuAD articles (see :func:`sampled_splits`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from adainfer.errors import AdaInferError
from adainfer.tasks.base import Example, Splits, shuffled_split
from adainfer.tasks.data import DataTask, local_root, sampled_splits
from adainfer.tasks.hub import Source, load_rows, origin

LETTERS = "ABCDE"

# The 57 subjects, as named by the hub configs and the local file names.
MMLU_SUBJECTS = (
    "abstract_algebra",
    "anatomy",
    "astronomy",
    "business_ethics",
    "clinical_knowledge",
    "college_biology",
    "college_chemistry",
    "college_computer_science",
    "college_mathematics",
    "college_medicine",
    "college_physics",
    "computer_security",
    "conceptual_physics",
    "econometrics",
    "electrical_engineering",
    "elementary_mathematics",
    "formal_logic",
    "global_facts",
    "high_school_biology",
    "high_school_chemistry",
    "high_school_computer_science",
    "high_school_european_history",
    "high_school_geography",
    "high_school_government_and_politics",
    "high_school_macroeconomics",
    "high_school_mathematics",
    "high_school_microeconomics",
    "high_school_physics",
    "high_school_psychology",
    "high_school_statistics",
    "high_school_us_history",
    "high_school_world_history",
    "human_aging",
    "human_sexuality",
    "international_law",
    "jurisprudence",
    "logical_fallacies",
    "machine_learning",
    "management",
    "marketing",
    "medical_genetics",
    "miscellaneous",
    "moral_disputes",
    "moral_scenarios",
    "nutrition",
    "philosophy",
    "prehistory",
    "professional_accounting",
    "professional_law",
    "professional_medicine",
    "professional_psychology",
    "public_relations",
    "security_studies",
    "sociology",
    "us_foreign_policy",
    "virology",
    "world_religions",
)

_MC_FIELDS = ("question", "choices", "answer")
CSQA_TRAIN = Source(
    "CommonsenseQA train",
    "commonsense_qa",
    "train.jsonl",
    _MC_FIELDS,
    "tau/commonsense_qa",
    None,
    "train",
)
CSQA_TEST = Source(
    "CommonsenseQA validation",
    "commonsense_qa",
    "validation.jsonl",
    _MC_FIELDS,
    "tau/commonsense_qa",
    None,
    "validation",
)
_SQUAD_FIELDS = ("context", "question", "answers")
# Hub only: the local copy has no train split (SquadTask cuts validation instead).
SQUAD_TRAIN = Source(
    "SQuAD train", "squad", "train.jsonl", _SQUAD_FIELDS, "rajpurkar/squad", None, "train"
)
SQUAD_TEST = Source(
    "SQuAD validation",
    "squad",
    "validation.jsonl",
    _SQUAD_FIELDS,
    "rajpurkar/squad",
    None,
    "validation",
)


def render_choices(question: str, choices: list[str]) -> str:
    """The question, then one ``<letter>. <choice>`` line per choice."""
    lines = [str(question).strip()]
    lines += [f"{LETTERS[i]}. {str(choice).strip()}" for i, choice in enumerate(choices)]
    return "\n".join(lines)


def answer_letter(answer: object, n_choices: int, what: str) -> str:
    """The answer as a letter: hub rows give an index (MMLU) or a letter, local rows a letter."""
    letters = list(LETTERS[:n_choices])
    if isinstance(answer, int) and not isinstance(answer, bool) and 0 <= answer < n_choices:
        return letters[answer]
    if isinstance(answer, str) and answer.strip() in letters:
        return answer.strip()
    raise AdaInferError(
        f"{what}: answer {answer!r} is neither one of the letters {letters} nor an index "
        f"0..{n_choices - 1}",
        "fix that row of the data",
    )


def _choice_texts(choices: object, n_choices: int, what: str) -> list[str]:
    """Choice texts from a list (local, MMLU hub) or a ``{label, text}`` dict (CSQA hub)."""
    if isinstance(choices, dict):
        if list(choices.get("label", [])) != list(LETTERS[:n_choices]):
            raise AdaInferError(
                f"{what}: choice labels {choices.get('label')!r} are not "
                f"{list(LETTERS[:n_choices])} in order",
                "fix that row of the data",
            )
        choices = choices.get("text")
    if not isinstance(choices, list) or len(choices) != n_choices:
        raise AdaInferError(
            f"{what}: choices {choices!r} are not a list of {n_choices} answers",
            "fix that row of the data",
        )
    return choices


def mmlu_example(row: dict) -> Example:
    """One MMLU row (hub: ``answer`` index 0-3; local: ``answer`` letter A-D)."""
    what = f"MMLU question {str(row['question'])[:60]!r}"
    choices = _choice_texts(row["choices"], 4, what)
    return Example(render_choices(row["question"], choices), answer_letter(row["answer"], 4, what))


def csqa_example(row: dict) -> Example:
    """One CommonsenseQA row (hub: ``choices`` {label, text}, ``answerKey``; local: a list of 5
    choices and ``answer``)."""
    what = f"CommonsenseQA question {str(row['question'])[:60]!r}"
    choices = _choice_texts(row["choices"], 5, what)
    answer = row["answerKey"] if "answerKey" in row else row["answer"]
    return Example(render_choices(row["question"], choices), answer_letter(answer, 5, what))


def squad_example(row: dict) -> Example:
    """One SQuAD row: input = context + newline + question, answer = the first answer text
    (every annotator answer is kept in ``answers``, for generated answers' exact match and F1)."""
    texts = row["answers"].get("text") if isinstance(row["answers"], dict) else None
    if not texts:
        raise AdaInferError(
            f"SQuAD question {str(row['question'])[:60]!r}: answers {row['answers']!r} hold no "
            "answer text",
            "fix that row of the data (answers must be {'text': [str, ...], ...})",
        )
    question = f"{str(row['context']).strip()}\n{str(row['question']).strip()}"
    return Example(question, str(texts[0]).strip(), tuple(str(t).strip() for t in texts))


@dataclass
class MMLUTask(DataTask):
    """MMLU, 4-way multiple choice over 57 subjects (all by default, or ``subjects``).

    Train (the demonstration pool, and what the exit classifier is fitted on) is the dev split
    of the selected subjects, 5 questions each, so demonstrations mix subjects unless one
    subject is selected; test is the test split. Answer: the letter A-D.
    """

    name: str = "mmlu"
    subjects: list[str] | None = None

    @property
    def labels(self) -> list[str]:
        """The answer letters."""
        return list(LETTERS[:4])

    def selected_subjects(self) -> list[str]:
        """The subjects to load, checked against the 57 of MMLU."""
        if self.subjects is None:
            return list(MMLU_SUBJECTS)
        chosen = [self.subjects] if isinstance(self.subjects, str) else list(self.subjects)
        unknown = [s for s in chosen if s not in MMLU_SUBJECTS]
        if unknown or not chosen:
            problem = f"unknown MMLU subject(s) {unknown}" if unknown else "no MMLU subject chosen"
            raise AdaInferError(
                problem,
                f"use task.subjects=null for all, or some of {list(MMLU_SUBJECTS)}",
            )
        return chosen

    def _sources(self, split: str, subjects: list[str]) -> list[Source]:
        if self.subjects is None and local_root(self.data_dir) is None:
            # One hub config holds every subject: one download instead of 57.
            return [Source(f"MMLU {split}", "mmlu", "", _MC_FIELDS, "cais/mmlu", "all", split)]
        return [
            Source(
                f"MMLU {subject} {split}",
                "mmlu",
                f"{split}/{subject}.jsonl",
                _MC_FIELDS,
                "cais/mmlu",
                subject,
                split,
            )
            for subject in subjects
        ]

    def _rows(self, split: str, subjects: list[str]) -> list[dict]:
        rows = []
        for source in self._sources(split, subjects):
            rows += load_rows(source, self.data_dir, self.name)
        return rows

    def load(self) -> Splits:
        subjects = self.selected_subjects()
        train = [mmlu_example(r) for r in self._rows("dev", subjects)]
        test = [mmlu_example(r) for r in self._rows("test", subjects)]
        sources = tuple(
            origin(self._sources(split, subjects), self.data_dir, self.name)
            for split in ("dev", "test")
        )
        return sampled_splits(self, train, test, sources)


@dataclass
class CommonsenseQATask(DataTask):
    """CommonsenseQA, 5-way multiple choice: train = train (9,741), test = validation (1,221).

    Answer: the letter A-E.
    """

    name: str = "commonsense_qa"

    @property
    def labels(self) -> list[str]:
        """The answer letters."""
        return list(LETTERS)

    def load(self) -> Splits:
        train = [csqa_example(r) for r in load_rows(CSQA_TRAIN, self.data_dir, self.name)]
        test = [csqa_example(r) for r in load_rows(CSQA_TEST, self.data_dir, self.name)]
        sources = tuple(origin([s], self.data_dir, self.name) for s in (CSQA_TRAIN, CSQA_TEST))
        return sampled_splits(self, train, test, sources)


@dataclass
class SquadTask(DataTask):
    """SQuAD v1.1, extractive QA with free-form answers (``labels`` is None).

    From the hub: train = train, test = validation. Locally only validation (10,570 rows)
    exists, so it is cut with ``split_seed`` into a demonstration pool (``train_fraction`` of
    it, the task's train split) and a test part; a paragraph may thus serve a demonstration
    and, with another question, a test instance.
    """

    name: str = "squad"
    train_fraction: float = 0.5
    text_scores: ClassVar[str] = "squad"  # generated answers: normalized exact match and F1

    @property
    def labels(self) -> None:
        """None: answers are free text, not a closed set."""
        return None

    def load(self) -> Splits:
        if local_root(self.data_dir) is None:
            train = [squad_example(r) for r in load_rows(SQUAD_TRAIN, None, self.name)]
            test = [squad_example(r) for r in load_rows(SQUAD_TEST, None, self.name)]
            sources = tuple(origin([s], None, self.name) for s in (SQUAD_TRAIN, SQUAD_TEST))
        else:
            if not 0 < self.train_fraction < 1:
                raise AdaInferError(
                    f"task {self.name!r}: train_fraction={self.train_fraction} is not "
                    "between 0 and 1",
                    "use e.g. task.train_fraction=0.5",
                )
            rows = load_rows(SQUAD_TEST, self.data_dir, self.name)
            examples = [squad_example(r) for r in rows]
            train, test = shuffled_split(examples, (self.train_fraction,), self.split_seed)
            sources = (origin([SQUAD_TEST], self.data_dir, self.name),) * 2
        return sampled_splits(self, train, test, sources)
