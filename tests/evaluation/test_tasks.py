"""Each task's prompt and choices from its local jsonl, few-shot drawing, and the data errors."""

import json

import pytest

from nemo_llm.config import ConfigError, compose, validate
from nemo_llm.evaluation.tasks import (SHOT_SEPARATOR, TASK_NAMES, TASKS, TaskDataError, draw_shots, hellaswag_clean,
                                       load_examples, prepare_task)
from tests.evaluation.conftest import TASK_DATA

# The first evaluation record of each task in tests/data/eval_tasks: (shared context, choices, gold).
FIRST = {
    "lambada": ("She put the kettle on, waited for it to whistle, and poured the hot water into her cup of",
                [" tea"], 0),
    "race_h": (("Article: Tom lives in a small town by the sea. Every morning he walks to the harbour to watch the "
                "fishing boats come in.\n\nQuestion: Where does Tom go every morning?\nAnswer:"),
               [" To school", " To the harbour", " To the mountains", " To the market"], 1),
    "boolq": ("The Sun is the star at the centre of the Solar System.\nQuestion: is the sun a star?\nAnswer:",
              [" no", " yes"], 1),
    "piqa": ("Question: How do you keep bread fresh?\nAnswer:",
             [" Store it in a sealed bag.", " Leave it in the sun."], 0),
    "hellaswag": (("Removing ice from car: Then, the man writes over the snow covering the window of a car, and a "
                   "woman wearing winter clothes smiles. Then"),
                  [" , the man adds wax to the windshield and cuts it.",
                   " , a person boards a ski lift with two friends.",
                   " , the man puts on a christmas coat, knitted with netting.",
                   " , the man continues removing the snow on his car."], 3),
    "anli_r1": (("The museum opened in 1920 in the centre of Paris.\nQuestion: The museum is in France. True, False, "
                 "or Neither?\nAnswer:"), [" True", " Neither", " False"], 0),
    "anli_r2": (("The river floods every spring.\nQuestion: The river sometimes floods. True, False, or Neither?\n"
                 "Answer:"), [" True", " Neither", " False"], 0),
    "anli_r3": (("Liam finished the marathon in under four hours.\nQuestion: Liam ran a marathon. True, False, or "
                 "Neither?\nAnswer:"), [" True", " Neither", " False"], 0),
    "hans": ("The doctor saw the lawyer.\nQuestion: The lawyer saw the doctor. True or False?\nAnswer:",
             [" True", " False"], 1),
    "wic": (("Sentence 1: He sat on the bank of the river.\nSentence 2: She opened an account at the bank.\n"
             "Question: Is the word 'bank' used with the same meaning in both sentences?\nAnswer:"),
            [" no", " yes"], 0),
}
RECORDS = {"lambada": 4, "race_h": 2, "boolq": 3, "piqa": 3, "hellaswag": 2, "winogrande": 3, "anli_r1": 2,
           "anli_r2": 2, "anli_r3": 3, "hans": 2, "wic": 2}


def test_the_registry_is_mt_nlg_s_task_list():
    assert set(TASK_NAMES) == set(RECORDS)
    assert set(FIRST) | {"winogrande"} == set(TASK_NAMES)


@pytest.mark.parametrize("name", sorted(FIRST))
def test_prompt_and_choices_from_local_jsonl(name):
    task = TASKS[name]
    examples = load_examples(task, task.eval_split, TASK_DATA)
    assert len(examples) == RECORDS[name]
    context, answers, gold = FIRST[name]
    assert examples[0].choices == tuple((context, answer) for answer in answers)
    assert examples[0].gold == gold
    # every record of both splits builds, with the gold among its choices
    for split in {task.eval_split, task.fewshot_split}:
        for example in load_examples(task, split, TASK_DATA):
            assert 0 <= example.gold < len(example.choices)


def test_winogrande_puts_each_option_in_the_context_and_scores_the_shared_rest():
    task = TASKS["winogrande"]
    first = load_examples(task, "validation", TASK_DATA)[0]
    assert first.choices == (
        ("The trophy doesn't fit into the brown suitcase because the trophy", " is too large."),
        ("The trophy doesn't fit into the brown suitcase because the suitcase", " is too large."))
    assert first.gold == 0
    assert not task.length_normalized  # the scored text is the same for both options
    assert first.solved() == "The trophy doesn't fit into the brown suitcase because the trophy is too large."


def test_lambada_scores_the_last_word_with_its_space():
    example = load_examples(TASKS["lambada"], "test", TASK_DATA)[1]
    assert example.choices == (("The dog dropped the ball at my feet and wagged its tail until I threw the", " ball"),)
    assert TASKS["lambada"].fewshot_split == TASKS["lambada"].eval_split  # LAMBADA has no other split


def test_hellaswag_cleaning():
    assert hellaswag_clean(" Fill a pot [title] Add water [step] then boil.  ") == "Fill a pot. Add water then boil."


def test_limit_takes_the_first_examples():
    assert prepare_task("boolq", TASK_DATA, limit=2).examples == load_examples(TASKS["boolq"], "validation",
                                                                                   TASK_DATA)[:2]


def test_fewshot_is_seeded_per_example_and_never_shows_the_example_itself():
    lambada = prepare_task("lambada", TASK_DATA, num_fewshot=3, fewshot_seed=7)
    for i, example in enumerate(lambada.examples):
        # 4 passages, 3 shots from the same split: exactly the other three, in a seeded order
        assert example not in lambada.shots[i]
        assert sorted(map(str, lambada.shots[i])) == sorted(str(e) for e in lambada.examples if e != example)
    assert prepare_task("lambada", TASK_DATA, num_fewshot=3, fewshot_seed=7) == lambada
    orders = {seed: prepare_task("lambada", TASK_DATA, num_fewshot=3, fewshot_seed=seed).shots for seed in range(6)}
    assert len({json.dumps([[e.choices for e in shots] for shots in o]) for o in orders.values()}) > 1

    pool = load_examples(TASKS["lambada"], "test", TASK_DATA)
    draws = {tuple(map(pool.index, draw_shots(i, pool, 1, 1234, same_split=True))) for i in range(4)}
    assert len(draws) > 1  # shots differ between examples


def test_fewshot_prompt_shows_solved_shots_then_the_question():
    piqa = prepare_task("piqa", TASK_DATA, num_fewshot=2, fewshot_seed=1)
    train = load_examples(TASKS["piqa"], "train", TASK_DATA)
    assert sorted(map(str, piqa.shots[0])) == sorted(map(str, train))  # the only two training examples
    requests = piqa.requests(0)
    shots = "".join(shot.solved() + SHOT_SEPARATOR for shot in piqa.shots[0])
    assert requests == [(shots + "Question: How do you keep bread fresh?\nAnswer:", " Store it in a sealed bag."),
                        (shots + "Question: How do you keep bread fresh?\nAnswer:", " Leave it in the sun.")]
    assert "Answer: Stuff them with newspaper.\n\n" in shots or "Answer: use a sharpener.\n\n" in shots


def test_too_many_shots_for_the_pool():
    with pytest.raises(TaskDataError, match=r"evaluation.num_fewshot=4 needs 5 examples .* which has 4"):
        prepare_task("lambada", TASK_DATA, num_fewshot=4)


def test_missing_data_names_the_task_the_file_and_the_hub_dataset(tmp_path, monkeypatch):
    import datasets

    def unreachable(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'baber/piqa' on the Hub (LocalEntryNotFoundError)\nmore detail")

    monkeypatch.setattr(datasets, "load_dataset", unreachable)
    with pytest.raises(TaskDataError) as info:
        prepare_task("piqa", tmp_path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"task piqa: no data for split validation: {tmp_path / 'piqa' / 'validation.jsonl'} "
                              "does not exist, and the hub dataset baber/piqa could not be loaded (ConnectionError: ")
    assert "evaluation.data_dir/piqa/" in message


def test_a_record_in_another_schema_is_refused_with_its_line(tmp_path):
    (tmp_path / "boolq").mkdir()
    records = [{"question": "q", "passage": "p", "label": 1}, {"question": "q", "answer": True}]
    (tmp_path / "boolq" / "validation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    with pytest.raises(TaskDataError, match=r"validation.jsonl:2: no passage, label field for task boolq"):
        prepare_task("boolq", tmp_path)
    (tmp_path / "boolq" / "validation.jsonl").write_text(json.dumps({"question": "q", "passage": "p", "label": -1}))
    with pytest.raises(TaskDataError, match=r"validation.jsonl:1: gold answer -1 is not one of the 2 choices"):
        prepare_task("boolq", tmp_path)


def test_unknown_and_repeated_tasks_are_refused_by_validation():
    with pytest.raises(ConfigError, match=r"^evaluation.tasks\[\]=mmlu is not supported: use one of lambada, race_h"):
        validate(compose(["evaluation.tasks=[piqa,mmlu]"]))
    with pytest.raises(ConfigError, match="evaluation.tasks lists piqa more than once"):
        validate(compose(["evaluation.tasks=[piqa,boolq,piqa]"]))
    validate(compose([f"evaluation.tasks=[{','.join(TASK_NAMES)}]"]))

