"""Metrics of multiple-choice and last-word tasks on engines whose answers are known."""

import math

import pytest

from nemo_llm.evaluation.harness import (TaskTooLongError, accuracy_stderr, evaluate_task, evaluate_tasks,
                                         format_table, table_rows)
from nemo_llm.evaluation.tasks import LAST_WORD, Example, Task, TaskData, draw_shots
from tests.evaluation.conftest import FakeEngine

X = ord("x")


def handmade_task(kind: str = "multiple_choice", name: str = "handmade") -> Task:
    """A task of hand-written examples (no data to load)."""
    return Task(name, "local/handmade", None, "test", "test", (), Example, kind=kind)


def question(choices: list[str], gold: int, context: str = "Pick:") -> Example:
    return Example(tuple((context, choice) for choice in choices), gold)


def test_acc_counts_raw_log_likelihood_and_acc_norm_divides_by_characters():
    # 'x' costs 0.5 nats, any other token 2: " x" = -2.5 in total (-1.25 per character), " xxxxxx" = -5.0
    # (-0.71 per character). The raw sum prefers the short answer, the per-character mean the long one.
    engine = FakeEngine(lambda seq, i: -0.5 if seq[i] == X else -2.0)
    examples = [question([" x", " xxxxxx"], 1), question([" x", " xxxxxx"], 0),
                question([" y", " xx"], 1), question([" x", " xxxxxx"], 1)]
    result = evaluate_task(engine, TaskData(handmade_task(), examples), batch_size=3)
    assert result["acc"] == 0.5  # examples 2 and 3
    assert result["acc_norm"] == 0.75  # examples 1, 3 and 4
    assert result["n"] == 4 and result["num_fewshot"] == 0
    assert result["acc_stderr"] == pytest.approx(math.sqrt(0.25 / 3))
    assert result["acc_norm_stderr"] == pytest.approx(math.sqrt(0.75 * 0.25 / 3))
    # each choice is scored once, after its context: 4 examples x 2 choices
    assert len(engine.scored) == 8


def test_tied_choices_go_to_the_first():
    engine = FakeEngine(lambda seq, i: -1.0)
    result = evaluate_task(engine, TaskData(handmade_task(), [question([" a", " b"], 0), question([" a", " b"], 1)]))
    assert result["acc"] == 0.5


def test_a_trained_model_picks_the_known_answers(facts_engine):
    choices = [" blue", " green", " white", " black"]
    examples = [question(choices, 1, "grass is"), question(choices, 0, "the sky is"),
                question(choices, 2, "snow is"), question(choices, 3, "coal is")]
    result = evaluate_task(facts_engine, TaskData(handmade_task(), examples))
    assert result["acc"] == 1.0 and result["acc_norm"] == 1.0  # chance is 1/4 per question

    shots = [draw_shots(i, examples, 2, 1234, same_split=True) for i in range(4)]
    fewshot = evaluate_task(facts_engine, TaskData(handmade_task(), examples, shots))
    assert fewshot["acc"] == 1.0 and fewshot["num_fewshot"] == 2

    wrong_gold = [question(choices, (e.gold + 1) % 4, e.choices[0][0]) for e in examples]
    assert evaluate_task(facts_engine, TaskData(handmade_task(), wrong_gold))["acc"] == 0.0


def test_last_word_accuracy_is_greedy_agreement_and_perplexity_is_per_example(facts_engine):
    examples = [Example((("the sky is", " blue"),), 0), Example((("coal is", " black"),), 0),
                Example((("snow is", " green"),), 0)]
    result = evaluate_task(facts_engine, TaskData(handmade_task(LAST_WORD), examples))
    assert result["acc"] == pytest.approx(2 / 3)  # the model says "white" after "snow is"
    assert result["n"] == 3

    engine = FakeEngine(lambda seq, i: -1.0)  # a word of k tokens (with its space) has log-likelihood -k
    words = [Example((("a b", " cd"),), 0), Example((("a b", " efghi"),), 0)]
    result = evaluate_task(engine, TaskData(handmade_task(LAST_WORD), words))
    assert result["perplexity"] == pytest.approx(math.exp((3 + 6) / 2))
    assert result["acc"] == 1.0  # the fake engine calls every token greedy


def test_an_answer_longer_than_the_context_is_refused():
    engine = FakeEngine(lambda seq, i: -1.0, max_sequence_length=8)
    with pytest.raises(TaskTooLongError, match="task handmade: choice 1 of example 0 has 10 tokens, more than the "
                                               "model's context of 8: remove handmade from evaluation.tasks"):
        evaluate_task(engine, TaskData(handmade_task(), [question([" a", " abcdefghi"], 0)]))


def test_stderr_of_an_accuracy():
    assert accuracy_stderr([True]) is None
    assert accuracy_stderr([True, False]) == pytest.approx(0.5)
    assert accuracy_stderr([True] * 10) == 0.0


def test_results_table():
    engine = FakeEngine(lambda seq, i: -0.5 if seq[i] == X else -2.0)
    tasks = evaluate_tasks(engine, [TaskData(handmade_task(), [question([" x", " xxxxxx"], 1)]),
                                    TaskData(handmade_task(LAST_WORD, "words"), [Example((("a", " x"),), 0)])])
    results = {"validation": {"loss": 2.0, "perplexity": math.exp(2.0), "tokens": 64, "samples": 2, "batches": 1},
               "test": None,
               "perplexity": {"documents": 3, "token_perplexity": 5.0, "word_perplexity": 12345678.0,
                              "bits_per_byte": 1.5},
               "tasks": tasks}
    assert [row[:2] for row in table_rows(results)] == [
        ("validation", "loss"), ("validation", "perplexity"), ("documents", "token_perplexity"),
        ("documents", "word_perplexity"), ("documents", "bits_per_byte"), ("handmade", "acc"),
        ("handmade", "acc_norm"), ("words", "acc"), ("words", "perplexity")]
    lines = format_table(results).splitlines()
    assert [cell.strip() for cell in lines[0].split("|")] == ["task", "metric", "value", "stderr", "n"]
    assert [cell.strip() for cell in lines[4].split("|")] == ["documents", "token_perplexity", "5.0000", "-", "3"]
    assert [cell.strip() for cell in lines[5].split("|")] == ["documents", "word_perplexity", "1.2346e+07", "-", "3"]
    assert [cell.strip() for cell in lines[7].split("|")] == ["handmade", "acc", "0.0000", "-", "1"]
    assert len({len(line) for line in lines}) == 1  # aligned
