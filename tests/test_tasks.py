"""The data-set tasks on the real shared data: sizes, prompts, hub/local parity, bad input."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import datasets
import numpy as np
import pytest

from adainfer.errors import AdaInferError
from adainfer.tasks import FunctionVectorsTask, build_prompts
from adainfer.tasks.classification import (
    AG_NEWS_FV_WORDS,
    AGNewsTask,
    SST2Task,
    whole_sentences,
)
from adainfer.tasks.function_vectors import available_tasks
from adainfer.tasks.hub import load_hub_split
from adainfer.tasks.qa import (
    MMLU_SUBJECTS,
    CommonsenseQATask,
    MMLUTask,
    SquadTask,
    squad_example,
)

TASKS = {
    "mmlu": MMLUTask,
    "commonsense_qa": CommonsenseQATask,
    "squad": SquadTask,
    "sst2": SST2Task,
    "ag_news": AGNewsTask,
}


@pytest.fixture(scope="session")
def loaded(data_dir):
    """Each task loaded once from the local data, uncapped: name -> (task, splits)."""
    cache = {}

    def get(name: str):
        if name not in cache:
            task = TASKS[name](data_dir=str(data_dir))
            cache[name] = (task, task.load())
        return cache[name]

    return get


# ---- sizes: the row counts of shared/data/SOURCES.md ----------------------------------------


@pytest.mark.parametrize(
    ("name", "n_train", "n_test"),
    [
        ("mmlu", 285, 14042),
        ("commonsense_qa", 9741, 1221),
        ("sst2", 67349, 872),
        ("ag_news", 5000, 7600),
        ("squad", 5285, 5285),  # 10,570 validation rows cut in half
    ],
)
def test_row_counts(loaded, name, n_train, n_test):
    _, splits = loaded(name)
    assert (len(splits.train), len(splits.test)) == (n_train, n_test)


def test_label_words_follow_the_class_index(loaded):
    # SOURCES.md: SST-2 validation has 428 label 0 and 444 label 1; AG News test 1,900 per class.
    assert Counter(ex.output for ex in loaded("sst2")[1].test) == {"negative": 428, "positive": 444}
    ag_task, ag = loaded("ag_news")
    assert Counter(ex.output for ex in ag.test) == dict.fromkeys(ag_task.labels, 1900)
    assert Counter(ex.output for ex in ag.train) == {
        "World": 1259,
        "Sports": 1257,
        "Business": 1281,
        "Sci/Tech": 1203,
    }


def test_multiple_choice_answers_are_letters(loaded):
    for name, letters in (("mmlu", "ABCD"), ("commonsense_qa", "ABCDE")):
        task, splits = loaded(name)
        assert task.labels == list(letters)
        answers = Counter(ex.output for ex in splits.train + splits.test)
        assert set(answers) == set(letters)
        # every choice is rendered on its own line after the question
        for ex in splits.test[:50]:
            lines = ex.input.split("\n")
            assert [line[:3] for line in lines[-len(letters) :]] == [f"{c}. " for c in letters]


def test_mmlu_subject_selection(data_dir):
    # SOURCES.md: anatomy 5 dev / 135 test, virology 5 / 166.
    splits = MMLUTask(subjects=["anatomy", "virology"], data_dir=str(data_dir)).load()
    assert (len(splits.train), len(splits.test)) == (10, 135 + 166)
    assert len(MMLU_SUBJECTS) == len(set(MMLU_SUBJECTS)) == 57
    assert sorted(MMLU_SUBJECTS) == sorted(p.stem for p in (data_dir / "mmlu" / "test").iterdir())


def test_squad_split_is_a_partition(loaded, data_dir):
    task, splits = loaded("squad")
    assert task.labels is None
    rows = _local(data_dir, "squad/validation.jsonl")
    assert len(rows) == 10570
    assert Counter(splits.train + splits.test) == Counter(squad_example(r) for r in rows)
    first = squad_example(rows[0])
    assert first.input == rows[0]["context"] + "\n" + rows[0]["question"]
    assert first.output == "Denver Broncos"


def test_function_vectors_by_name(data_dir):
    names = available_tasks(data_dir)
    assert len(names) == 50 and {"antonym", "country-capital", "ag_news"} <= set(names)
    assert FunctionVectorsTask.available_tasks(str(data_dir / "function_vectors")) == names
    assert FunctionVectorsTask("antonym", data_dir=str(data_dir)).labels is None


def test_caps_sample_across_subjects(data_dir):
    # MMLU files are ordered by subject: a cap must not keep only the first subjects.
    splits = MMLUTask(data_dir=str(data_dir), n_train=40, n_test=200).load()
    assert (len(splits.train), len(splits.test)) == (40, 200)
    full = MMLUTask(data_dir=str(data_dir), subjects=["abstract_algebra", "anatomy"]).load()
    first_two = set(full.test)
    assert sum(ex in first_two for ex in splits.test) < 20


# ---- prompts -----------------------------------------------------------------------------------


def _first_prompt(task, splits) -> str:
    return build_prompts(splits.test[:1], splits.train, 5, seed=0, template=task.template)[0].text


def test_golden_prompt_mmlu(data_dir):
    task = MMLUTask(subjects=["high_school_geography"], data_dir=str(data_dir))
    assert _first_prompt(task, task.load()) == (
        "Q: Which one of the following items is an example of nonmaterial culture?\n"
        "A. Dove soap\nB. Dove candy bar\nC. Dove symbol\nD. A dove (bird)\nA: C\n\n"
        "Q: The rate of natural increase of a population is found by subtracting the\n"
        "A. crude death rate from the crude birth date.\n"
        "B. crude birth rate from the crude death rate.\n"
        "C. doubling time from the crude birth rate.\n"
        "D. fertility rate from the crude death rate.\nA: A\n\n"
        "Q: The practice of hiring a foreign third-party service provider to run an operation "
        "is called\nA. outsourcing.\nB. offshoring.\nC. maquiladoras.\n"
        "D. locational interdependence.\nA: B\n\n"
        "Q: During the third stage of the demographic transition model, which of the following "
        "is true?\n"
        "A. Birth rates increase and population growth rate is less rapid.\n"
        "B. Birth rates decline and population growth rate is less rapid.\n"
        "C. Birth rates increase and population growth rate increases.\n"
        "D. Birth rates decrease and population growth rate increases.\nA: B\n\n"
        "Q: Which of the following statements is NOT accurate regarding the services provided "
        "by local governments in the United States?\n"
        "A. Duplication of efforts occurs often.\n"
        "B. Social problems of the central city spill over into the surrounding residential "
        "suburbs.\n"
        "C. Inefficiency in providing services occurs often.\n"
        "D. One neighborhood's efforts to reduce pollution are always supported by neighboring "
        "communities.\nA: D\n\n"
        "Q: The way of life based on breeding and herding of animals that are used as a source "
        "of food, shelter, and clothing is called\n"
        "A. swidden.\nB. subsistence farming.\nC. pastorialism.\nD. hunting and gathering.\nA:"
    )


def test_golden_prompt_sst2(loaded):
    task, splits = loaded("sst2")
    assert _first_prompt(task, splits) == (
        "Q: the darling of many a kids-and-family-oriented cable channel\nA: positive\n\n"
        "Q: the gentle and humane side\nA: positive\n\n"
        "Q: greatest hits\nA: positive\n\n"
        "Q: such fury\nA: positive\n\n"
        "Q: with cheapo animation ( like saturday morning tv in the '60s ) , a complex "
        "sword-and-sorcery plot and characters who all have big round eyes and japanese names\n"
        "A: negative\n\n"
        "Q: harrison 's flowers puts its heart in the right place , but its brains are in no "
        "particular place at all .\nA:"
    )
    assert splits.test[0].output == "positive"  # validation idx 501 has label 1


def test_golden_prompt_function_vectors(data_dir):
    task = FunctionVectorsTask("country-capital", data_dir=str(data_dir))
    assert _first_prompt(task, task.load()) == (
        "Q: Cambodia\nA: Phnom Penh\n\nQ: Oman\nA: Muscat\n\nQ: Andorra\nA: Andorra la Vella\n\n"
        "Q: Thailand\nA: Bangkok\n\nQ: Morocco\nA: Rabat\n\nQ: San Marino\nA:"
    )


@pytest.mark.parametrize("name", sorted(TASKS))
def test_prompts_never_hold_their_own_instance(loaded, name):
    task, splits = loaded(name)
    prompts = build_prompts(splits.test[:100], splits.train, 5, seed=1, template=task.template)
    for ex, prompt in zip(splits.test[:100], prompts, strict=True):
        assert prompt.text.endswith(f"Q: {ex.input}\nA:")
        assert prompt.text.count(f"Q: {ex.input}\nA:") == 1
        assert prompt.text.count("\nA: ") == 5


def test_mmlu_dev_copies_of_test_questions_are_never_demonstrations(data_dir):
    # Five clinical_knowledge / college_medicine test questions also sit in the other
    # subject's dev split; with 9 shots from those 10 dev rows a copy would almost surely be
    # drawn if it were not excluded.
    task = MMLUTask(subjects=["clinical_knowledge", "college_medicine"], data_dir=str(data_dir))
    splits = task.load()
    pool = set(splits.train)
    copies = [ex for ex in splits.test if ex in pool]
    assert len(copies) == 5
    for prompt, ex in zip(build_prompts(copies, splits.train, 9, seed=0), copies, strict=True):
        assert prompt.text.count(f"Q: {ex.input}\nA:") == 1


# ---- hub and local give the same examples ----------------------------------------------------


def _local(data_dir: Path, rel: str) -> list[dict]:
    return [json.loads(line) for line in (data_dir / rel).open(encoding="utf-8")]


def _fake_hub(data_dir: Path, calls: list):
    """``datasets.load_dataset`` serving the local rows in each hub data set's own schema."""

    def load_dataset(hub_id, config=None, split=None):
        calls.append((hub_id, config, split))
        if hub_id == "nyu-mll/glue":
            rows = _local(data_dir, f"sst2/{split}.jsonl")
            rows = [{**r, "sentence": r["sentence"] + " "} for r in rows]  # GLUE's trailing space
        elif hub_id == "cais/mmlu":
            subjects = MMLU_SUBJECTS if config == "all" else [config]
            rows = [r for s in subjects for r in _local(data_dir, f"mmlu/{split}/{s}.jsonl")]
            rows = [{**r, "answer": "ABCD".index(r["answer"])} for r in rows]
        elif hub_id == "tau/commonsense_qa":
            rows = [
                {
                    "id": r["id"],
                    "question": r["question"],
                    "question_concept": r["question_concept"],
                    "choices": {"label": list("ABCDE"), "text": r["choices"]},
                    "answerKey": r["answer"],
                }
                for r in _local(data_dir, f"commonsense_qa/{split}.jsonl")
            ]
        elif hub_id == "fancyzhx/ag_news":
            name = "train_subset" if split == "train" else split
            rows = [
                {"text": r["text"], "label": r["label"]}
                for r in _local(data_dir, f"ag_news/{name}.jsonl")
            ]
        elif hub_id == "rajpurkar/squad":
            rows = _local(data_dir, "squad/validation.jsonl")
            half = len(rows) // 2
            rows = rows[:half] if split == "train" else rows[half:]
        else:
            raise datasets.exceptions.DatasetNotFoundError(f"no dataset {hub_id}")
        return datasets.Dataset.from_list(rows)

    return load_dataset


@pytest.fixture
def fake_hub(data_dir, monkeypatch):
    monkeypatch.delenv("ADAINFER_DATA_DIR", raising=False)
    calls: list = []
    monkeypatch.setattr(datasets, "load_dataset", _fake_hub(data_dir, calls))
    return calls


@pytest.mark.parametrize(
    ("make", "expected_calls"),
    [
        (
            lambda: MMLUTask(),
            [("cais/mmlu", "all", "dev"), ("cais/mmlu", "all", "test")],
        ),
        (
            lambda: MMLUTask(subjects=["anatomy"]),
            [("cais/mmlu", "anatomy", "dev"), ("cais/mmlu", "anatomy", "test")],
        ),
        (
            lambda: CommonsenseQATask(),
            [("tau/commonsense_qa", None, "train"), ("tau/commonsense_qa", None, "validation")],
        ),
        (
            lambda: SST2Task(),
            [("nyu-mll/glue", "sst2", "train"), ("nyu-mll/glue", "sst2", "validation")],
        ),
        (
            lambda: AGNewsTask(label_words=AG_NEWS_FV_WORDS),
            [("fancyzhx/ag_news", None, "train"), ("fancyzhx/ag_news", None, "test")],
        ),
    ],
)
def test_hub_rows_give_the_local_examples(fake_hub, data_dir, make, expected_calls):
    from_hub = make().load()
    assert fake_hub == expected_calls
    local = make()
    local.data_dir = str(data_dir)
    from_local = local.load()
    assert from_hub.train == from_local.train and from_hub.test == from_local.test


def test_squad_hub_uses_train_for_demonstrations(fake_hub, data_dir):
    splits = SquadTask().load()
    assert fake_hub == [("rajpurkar/squad", None, "train"), ("rajpurkar/squad", None, "validation")]
    rows = _local(data_dir, "squad/validation.jsonl")
    assert len(splits.train) == 5285 and len(splits.test) == 5285
    assert squad_example(rows[0]) in splits.train and squad_example(rows[-1]) in splits.test


def test_hub_offline_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("ADAINFER_DATA_DIR", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(AdaInferError) as err:
        SST2Task(data_dir=None).load()
    assert time.monotonic() - start < 10  # no network retries (about 25 s when they happen)
    text = str(err.value)
    assert "cannot load SST-2 train from the Hugging Face hub (nyu-mll/glue" in text
    assert "task.data_dir=PATH" in text and "ADAINFER_DATA_DIR" in text and "sst2/" in text
    with pytest.raises(AdaInferError, match=r"cannot load MMLU dev .*cais/mmlu, config 'all'"):
        MMLUTask().load()


def test_hub_errors_become_adainfer_errors(fake_hub):
    with pytest.raises(AdaInferError, match="cannot load my data .*no/such.*DatasetNotFoundError"):
        load_hub_split("no/such", None, "train", "my data")


# ---- bad input ----------------------------------------------------------------------------------


def test_unknown_function_vectors_task(data_dir):
    with pytest.raises(AdaInferError, match=r"unknown Function Vectors task 'antnym'") as err:
        FunctionVectorsTask("antnym", data_dir=str(data_dir)).load()
    assert "'antonym'" in str(err.value)  # the fix lists the real names


def test_unknown_mmlu_subject(data_dir):
    with pytest.raises(AdaInferError, match=r"unknown MMLU subject\(s\) \['anatomyy'\]") as err:
        MMLUTask(subjects=["anatomy", "anatomyy"], data_dir=str(data_dir)).load()
    assert "task.subjects=null" in str(err.value) and "'world_religions'" in str(err.value)
    with pytest.raises(AdaInferError, match="no MMLU subject chosen"):
        MMLUTask(subjects=[], data_dir=str(data_dir)).load()


def _write(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_missing_field_names_the_line(data_dir, tmp_path):
    rows = _local(data_dir, "commonsense_qa/validation.jsonl")[:3]
    del rows[2]["answer"]
    _write(tmp_path / "commonsense_qa" / "train.jsonl", rows)
    _write(tmp_path / "commonsense_qa" / "validation.jsonl", rows)
    with pytest.raises(AdaInferError, match=r"train.jsonl:3 lacks the field\(s\) \['answer'\]"):
        CommonsenseQATask(data_dir=str(tmp_path)).load()


def test_missing_file_and_empty_split(data_dir, tmp_path):
    _write(tmp_path / "sst2" / "train.jsonl", _local(data_dir, "sst2/validation.jsonl")[:20])
    with pytest.raises(AdaInferError, match=r"no data file .*sst2/validation.jsonl") as err:
        SST2Task(data_dir=str(tmp_path)).load()
    assert "task.data_dir" in str(err.value)
    (tmp_path / "sst2" / "validation.jsonl").write_text("")
    with pytest.raises(AdaInferError, match="the test split is empty") as err:
        SST2Task(data_dir=str(tmp_path)).load()
    assert "Fix:" in str(err.value)


def test_bad_rows_and_options(data_dir, tmp_path):
    rows = _local(data_dir, "mmlu/dev/anatomy.jsonl")
    rows[1]["answer"] = "E"
    _write(tmp_path / "mmlu" / "dev" / "anatomy.jsonl", rows)
    _write(tmp_path / "mmlu" / "test" / "anatomy.jsonl", rows)
    with pytest.raises(AdaInferError, match=r"answer 'E' is neither one of the letters"):
        MMLUTask(subjects=["anatomy"], data_dir=str(tmp_path)).load()
    with pytest.raises(AdaInferError, match=r"label_words=\['bad', 'good', 'meh'\] must be 2"):
        SST2Task(data_dir=str(data_dir), label_words=["bad", "good", "meh"]).load()
    with pytest.raises(AdaInferError, match="train_fraction=1.5"):
        SquadTask(data_dir=str(data_dir), train_fraction=1.5).load()


def test_non_utf8_byte_names_the_file_and_line(data_dir, tmp_path):
    rows = _local(data_dir, "function_vectors/abstractive/antonym.jsonl")[:10]
    _write(tmp_path / "function_vectors" / "abstractive" / "antonym.jsonl", rows)
    path = tmp_path / "function_vectors" / "abstractive" / "antonym.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    lines[3] = lines[3].replace(b'"input": "', b'"input": "caf\xe9 ')  # Latin-1, not UTF-8
    path.write_bytes(b"".join(lines))
    with pytest.raises(AdaInferError, match=r"antonym.jsonl:4, byte \d+: not UTF-8") as err:
        FunctionVectorsTask(name="antonym", data_dir=str(tmp_path)).load()
    assert "re-save the file as UTF-8" in str(err.value)
    # The hub-or-local readers (SST-2 here) go through the same check.
    (tmp_path / "sst2").mkdir()
    (tmp_path / "sst2" / "train.jsonl").write_bytes(b'{"sentence": "na\xefve", "label": 1}\n')
    with pytest.raises(AdaInferError, match=r"sst2/train.jsonl:1, byte 17: not UTF-8"):
        SST2Task(data_dir=str(tmp_path)).load()


def test_bad_json_names_line_and_column(tmp_path):
    (tmp_path / "sst2").mkdir()
    (tmp_path / "sst2" / "train.jsonl").write_text('{"sentence": "ok", "label": 1}\n{"a": }\n')
    with pytest.raises(AdaInferError) as err:
        SST2Task(data_dir=str(tmp_path)).load()
    first = str(err.value).splitlines()[0]
    assert first.endswith("train.jsonl:2, column 7: not valid JSON (Expecting value)"), first


def test_empty_split_names_its_file(data_dir, tmp_path, fake_hub):
    _write(tmp_path / "sst2" / "train.jsonl", _local(data_dir, "sst2/validation.jsonl")[:20])
    (tmp_path / "sst2" / "validation.jsonl").write_text("\n")
    with pytest.raises(AdaInferError, match="the test split is empty") as err:
        SST2Task(data_dir=str(tmp_path)).load()
    assert f"read from {tmp_path / 'sst2' / 'validation.jsonl'}" in str(err.value)
    with pytest.raises(AdaInferError, match="the train split is empty") as err:
        SST2Task(n_train=0).load()  # from the (fake) hub: the data set is named
    assert "hub data set nyu-mll/glue, config 'sst2', split 'train'" in str(err.value)


def test_fewer_rows_than_asked_warn_and_calibration_suggests_sizes(data_dir, caplog):
    with caplog.at_level("WARNING", logger="adainfer.tasks.base"):
        splits = FunctionVectorsTask(
            name="antonym", data_dir=str(data_dir), n_train=100_000, n_test=100_000
        ).load()
    text = caplog.text
    assert f"task.n_train=100000 asks for more train instances than the {len(splits.train)}" in text
    assert f"task.n_test=100000 asks for more test instances than the {len(splits.test)}" in text
    pool = len(splits.train)
    with pytest.raises(AdaInferError, match="none are left for calibration") as err:
        FunctionVectorsTask(
            name="antonym", data_dir=str(data_dir), n_train=pool, n_calibration=50
        ).load()
    fix = f"task.n_train={pool - 50} task.n_calibration=50"
    assert fix in str(err.value)
    # The suggested sizes do fit: no error, no warning, all 50 held out.
    caplog.clear()
    with caplog.at_level("WARNING", logger="adainfer.tasks.base"):
        fitted = FunctionVectorsTask(
            name="antonym", data_dir=str(data_dir), n_train=pool - 50, n_calibration=50
        ).load()
    assert len(fitted.calibration) == 50 and not caplog.text


def test_calibration_from_test_is_carved_out_of_the_test_split(data_dir):
    """SST-2's train split is phrases and its test split full sentences: a calibration split
    drawn like the test split is one held out of it, disjoint from what is tested."""
    plain = SST2Task(data_dir=str(data_dir), n_train=20, n_test=None).load()
    carved = SST2Task(
        data_dir=str(data_dir), n_train=20, n_test=None, n_calibration=300, calibration_from="test"
    ).load()
    assert carved.train == plain.train  # the train sample does not move
    assert len(carved.calibration) == 300
    assert len(carved.test) == len(plain.test) - 300
    assert carved.calibration + carved.test == plain.test  # one shuffled test split, cut in two
    held = SST2Task(data_dir=str(data_dir), n_train=20, n_calibration=300).load()
    assert not set(held.calibration) & set(plain.test)  # the default: held out of train
    capped = SST2Task(
        data_dir=str(data_dir), n_train=20, n_test=100, n_calibration=300, calibration_from="test"
    ).load()
    assert capped.test == carved.test[:100]


def test_calibration_from_test_needs_test_instances_left(data_dir):
    with pytest.raises(AdaInferError, match="leaves none of the 872 test instances") as err:
        SST2Task(data_dir=str(data_dir), n_calibration=872, calibration_from="test").load()
    assert "task.calibration_from=train" in str(err.value)
    with pytest.raises(AdaInferError, match="calibration_from='tset' is not one of"):
        SST2Task(data_dir=str(data_dir), n_calibration=10, calibration_from="tset").load()


def test_whole_sentences_are_the_phrases_no_other_phrase_contains():
    """A treebank's phrases: each row whose tokens sit inside another row is a part. Partial
    overlaps and parts of the text within a token do not count."""
    rows = [
        {"sentence": "a fine , funny film .", "label": 1},
        {"sentence": "a fine", "label": 1},
        {"sentence": "funny film", "label": 1},
        {"sentence": "fine , funny", "label": 1},
        {"sentence": "film . it", "label": 0},  # overlaps the end, is inside nothing
        {"sentence": "fun", "label": 1},  # inside "funny", a token, not a whole token
        {"sentence": "dull", "label": 0},
        {"sentence": "dull ", "label": 0},  # the same text again (GLUE's trailing space)
    ]
    kept = whole_sentences(rows)
    assert [r["sentence"] for r in kept] == [
        "a fine , funny film .",
        "film . it",
        "fun",
        "dull",
        "dull ",
    ]


def test_sst2_train_sentences_are_drawn_like_its_test_sentences(data_dir):
    """task.train_rows=sentences keeps the train split's whole sentences: none is a part of
    another train row, none is a validation sentence, and their lengths are distributed as the
    test sentences' are (the phrases' are not), so a calibration split held out of them is
    drawn like the test split."""
    phrases = SST2Task(data_dir=str(data_dir), n_train=None, n_test=None).load()
    sentences = SST2Task(
        data_dir=str(data_dir), n_train=None, n_test=None, train_rows="sentences"
    ).load()
    assert sentences.test == phrases.test
    texts = {e.input for e in sentences.train}
    assert 6000 < len(sentences.train) < 7000  # SST's 6,920 binary train sentences, about
    assert texts <= {e.input for e in phrases.train}
    assert not texts & {e.input for e in sentences.test}

    def words(examples):
        return np.array([len(e.input.split()) for e in examples])

    test, kept, every = words(sentences.test), words(sentences.train), words(phrases.train)
    assert abs(np.median(kept) - np.median(test)) <= 1 < abs(np.median(every) - np.median(test))
    assert abs(kept.mean() - test.mean()) < 1 < abs(every.mean() - test.mean())
    for text in sorted(texts, key=len)[:200]:  # the shortest kept: is any a part of another?
        assert not any(f" {text} " in f" {other} " for other in texts if other != text)


def test_sst2_train_sentences_hold_out_calibration_and_fit(data_dir):
    task = SST2Task(
        data_dir=str(data_dir),
        n_train=100,
        n_test=None,
        n_calibration=2000,
        n_fit=2000,
        calibration_from="train",
        train_rows="sentences",
    )
    splits = task.load()
    assert (len(splits.train), len(splits.calibration), len(splits.fit)) == (100, 2000, 2000)
    assert len(splits.test) == 872
    with pytest.raises(AdaInferError, match="train_rows='sentence' is not one of") as err:
        SST2Task(data_dir=str(data_dir), train_rows="sentence").load()
    assert "task.train_rows=sentences" in str(err.value)


def test_test_from_train_holds_the_test_split_out_after_calibration(data_dir):
    """task.test_from=train: the test split is the n_test train instances right after the train
    sample and the calibration split, so neither of those moves, no test instance is a
    demonstration, a calibration or a fit instance, and adding a fit split moves no test one."""
    sizes = {
        "data_dir": str(data_dir),
        "n_train": 100,
        "n_calibration": 2000,
        "calibration_from": "train",
        "train_rows": "sentences",
    }
    own = SST2Task(**sizes, n_test=None).load()
    held = SST2Task(**sizes, n_test=2000, test_from="train").load()
    fitted = SST2Task(**sizes, n_test=2000, test_from="train", n_fit=2000).load()
    assert (held.train, held.calibration) == (own.train, own.calibration)
    assert (fitted.train, fitted.test, fitted.calibration) == (
        held.train,
        held.test,
        held.calibration,
    )
    assert (len(held.test), len(fitted.fit)) == (2000, 2000)

    def rows(examples):
        return {(e.input, e.output) for e in examples}

    assert len(rows(held.test)) == 2000
    assert not rows(held.test) & (rows(held.train) | rows(held.calibration) | rows(fitted.fit))
    assert not rows(held.test) & rows(own.test)  # not the validation sentences
    assert {e.output for e in held.test} == {"negative", "positive"}


def test_test_from_train_rejects_what_it_cannot_honour(data_dir):
    base = {"data_dir": str(data_dir), "train_rows": "sentences", "test_from": "train"}
    with pytest.raises(AdaInferError, match="calibration_from=test") as err:
        SST2Task(**base, n_train=10, n_test=10, n_calibration=10, calibration_from="test").load()
    assert "task.calibration_from=train" in str(err.value)
    with pytest.raises(AdaInferError, match="needs task.n_test"):
        SST2Task(**base, n_train=10, n_test=None).load()
    with pytest.raises(AdaInferError, match="n_train is unset"):
        SST2Task(**base, n_train=None, n_test=10).load()
    with pytest.raises(AdaInferError, match="none of its .* left for test_from=train"):
        SST2Task(**base, n_train=6000, n_calibration=2000, n_test=10).load()
    with pytest.raises(AdaInferError, match="test_from='tarin' is not one of"):
        SST2Task(**{**base, "test_from": "tarin"}, n_train=10, n_test=10).load()


@pytest.mark.parametrize("source", ["train", "test"])
def test_the_fit_split_is_held_out_and_moves_no_other_split(data_dir, source):
    """task.n_fit adds training pairs for the exit classifier: instances of the train split
    that are neither demonstrations nor calibration, and adding them changes no other split
    (so every stored trace of those splits stays valid)."""
    sizes = {"data_dir": str(data_dir), "n_train": 20, "n_test": 100, "n_calibration": 50}
    plain = AGNewsTask(**sizes, calibration_from=source).load()
    more = AGNewsTask(**sizes, calibration_from=source, n_fit=300).load()
    assert (more.train, more.test, more.calibration) == (plain.train, plain.test, plain.calibration)
    assert len(more.fit) == 300 and not plain.fit
    held = {(e.input, e.output) for e in more.train + more.calibration}
    assert not {(e.input, e.output) for e in more.fit} & held
    assert len({(e.input, e.output) for e in more.fit}) > 290  # distinct rows, not one repeated


def test_the_fit_split_names_what_is_missing(data_dir, caplog):
    with pytest.raises(AdaInferError, match="task.n_fit needs held-out train instances") as err:
        AGNewsTask(data_dir=str(data_dir), n_train=None, n_fit=10).load()
    assert "task.n_train=100 task.n_fit=10" in str(err.value)
    pool = len(AGNewsTask(data_dir=str(data_dir), n_train=None).load().train)
    with pytest.raises(AdaInferError, match="none of its .* train instances is left"):
        AGNewsTask(data_dir=str(data_dir), n_train=pool - 10, n_calibration=10, n_fit=5).load()
    with caplog.at_level("WARNING", logger="adainfer.tasks.data"):
        short = AGNewsTask(data_dir=str(data_dir), n_train=pool - 10, n_fit=50).load()
    assert len(short.fit) == 10 and "task.n_fit=50 asks for more" in caplog.text
