"""The benchmarks of MT-NLG's zero/one/few-shot evaluation, as prompts and answer choices.

Every task reduces to log-likelihood requests: an Example is a list of choices, each a (context,
continuation) pair of strings, and the model's answer is the choice whose continuation it finds
most likely after its context. Most tasks share one context between their choices; WinoGrande
instead puts each option into the context and scores the words after the blank ("partial
scoring"); LAMBADA has one choice, the passage's last word, scored for greedy accuracy.

Records come from <data_dir>/<task>/<split>.jsonl when that file exists (one record per line, in
the Hugging Face dataset's own columns), else from the hub with datasets.load_dataset.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nemo_llm.data.jsonl import jsonl_records
from nemo_llm.errors import NemoLLMError

MULTIPLE_CHOICE, LAST_WORD = "multiple_choice", "last_word"
SHOT_SEPARATOR = "\n\n"  # between the solved examples shown as shots, and before the question


class TaskDataError(NemoLLMError, ValueError):
    """A task's data that cannot be found or read; the message names the file or hub dataset."""


@dataclass(frozen=True)
class Example:
    """One question: choices[i] = (context, continuation) strings, choices[gold] the right one."""

    choices: tuple[tuple[str, str], ...]
    gold: int

    def solved(self) -> str:
        """The example with its answer filled in, as a few-shot demonstration shows it."""
        context, continuation = self.choices[self.gold]
        return context + continuation


@dataclass(frozen=True)
class Task:
    """A benchmark: where its data lives, which columns a record has, and how a record becomes an
    Example (`build`)."""

    name: str
    hf_path: str
    hf_name: str | None
    eval_split: str
    fewshot_split: str  # the eval split itself where the dataset has no other labelled split
    fields: tuple[str, ...]  # columns build() reads
    build: Callable[[dict[str, Any]], Example]
    kind: str = MULTIPLE_CHOICE
    # Whether acc_norm means anything: WinoGrande's choices share their continuation.
    length_normalized: bool = True
    # A hub branch to read; datasets that still ship a loading script (which datasets>=4 no longer
    # runs) are read from the hub's parquet conversion, refs/convert/parquet.
    hf_revision: str | None = None

    @property
    def hub_dataset(self) -> str:
        return self.hf_path + (f" ({self.hf_name})" if self.hf_name else "")


@dataclass
class TaskData:
    """What a task is evaluated on: the examples, and for each the shots shown before it."""

    task: Task
    examples: list[Example]
    shots: list[list[Example]] = field(default_factory=list)  # empty: zero-shot

    @property
    def num_fewshot(self) -> int:
        return len(self.shots[0]) if self.shots else 0

    def requests(self, index: int) -> list[tuple[str, str]]:
        """(context, continuation) of each choice of example `index`, shots first."""
        shots = self.shots[index] if self.shots else []
        prefix = "".join(shot.solved() + SHOT_SEPARATOR for shot in shots)
        return [(prefix + context, continuation) for context, continuation in self.examples[index].choices]


# --- prompts ---------------------------------------------------------------------------------------
# Formats follow the GPT-3 paper's appendix (which MT-NLG reused): a question, then "Answer:" and each
# choice after a space, so that the choices are scored as the words they are.

def _one_context(context: str, answers: Sequence[str], gold: int) -> Example:
    return Example(tuple((context, answer) for answer in answers), gold)


def _lambada(r: dict) -> Example:
    context, word = r["text"].strip().rsplit(" ", 1)
    return Example(((context, " " + word),), 0)


def _race(r: dict) -> Example:
    context = f"Article: {r['article'].strip()}\n\nQuestion: {r['question'].strip()}\nAnswer:"
    gold = {"A": 0, "B": 1, "C": 2, "D": 3}[r["answer"]]
    return _one_context(context, [" " + option.strip() for option in r["options"]], gold)


def _boolq(r: dict) -> Example:
    return _one_context(f"{r['passage'].strip()}\nQuestion: {r['question'].strip()}?\nAnswer:", [" no", " yes"],
                        int(r["label"]))


def _piqa(r: dict) -> Example:
    return _one_context(f"Question: {r['goal'].strip()}\nAnswer:", [" " + r["sol1"].strip(), " " + r["sol2"].strip()],
                        int(r["label"]))


def hellaswag_clean(text: str) -> str:
    """HellaSwag's WikiHow contexts carry markup: " [title]" ends a heading, other [tags] are noise."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def _hellaswag(r: dict) -> Example:
    context = hellaswag_clean(f"{r['activity_label']}: {r['ctx_a']} {r['ctx_b'].capitalize()}")
    return _one_context(context, [" " + hellaswag_clean(ending) for ending in r["endings"]], int(r["label"]))


def _winogrande(r: dict) -> Example:
    sentence = r["sentence"]
    blank = sentence.index("_")
    # Partial scoring: the option goes into the context, and the words after the blank, the same for
    # both options, are what is scored: which option makes the rest of the sentence likely.
    rest = sentence[blank + 1:].strip()
    if not rest:
        raise ValueError("nothing follows the blank, so there is nothing to score")
    options = (r["option1"], r["option2"])
    return Example(tuple((sentence[:blank] + option, " " + rest) for option in options), int(r["answer"]) - 1)


def _anli(r: dict) -> Example:
    # labels: 0 entailment, 1 neutral, 2 contradiction
    context = f"{r['premise'].strip()}\nQuestion: {r['hypothesis'].strip()} True, False, or Neither?\nAnswer:"
    return _one_context(context, [" True", " Neither", " False"], int(r["label"]))


def _hans(r: dict) -> Example:
    # labels: 0 entailment, 1 non-entailment
    context = f"{r['premise'].strip()}\nQuestion: {r['hypothesis'].strip()} True or False?\nAnswer:"
    return _one_context(context, [" True", " False"], int(r["label"]))


def _wic(r: dict) -> Example:
    context = (f"Sentence 1: {r['sentence1'].strip()}\nSentence 2: {r['sentence2'].strip()}\n"
               f"Question: Is the word '{r['word']}' used with the same meaning in both sentences?\nAnswer:")
    return _one_context(context, [" no", " yes"], int(r["label"]))


def _anli_round(n: int) -> Task:
    return Task(f"anli_r{n}", "facebook/anli", None, f"test_r{n}", f"train_r{n}", ("premise", "hypothesis", "label"),
                _anli)


TASKS: dict[str, Task] = {task.name: task for task in [
    # LAMBADA: the last word of a passage, which takes the whole passage to predict
    Task("lambada", "EleutherAI/lambada_openai", "default", "test", "test", ("text",), _lambada, kind=LAST_WORD),
    # RACE-h: reading comprehension from high-school English exams, four options
    Task("race_h", "ehovy/race", "high", "test", "train", ("article", "question", "options", "answer"), _race),
    # BoolQ: a yes/no question about a Wikipedia passage
    Task("boolq", "aps/super_glue", "boolq", "validation", "train", ("passage", "question", "label"), _boolq),
    # PIQA: physical commonsense, which of two solutions reaches a goal
    Task("piqa", "baber/piqa", None, "validation", "train", ("goal", "sol1", "sol2", "label"), _piqa),
    # HellaSwag: commonsense, which of four endings continues a scene
    Task("hellaswag", "Rowan/hellaswag", None, "validation", "train",
         ("activity_label", "ctx_a", "ctx_b", "endings", "label"), _hellaswag),
    # WinoGrande: which of two names fills a blank (pronoun resolution at scale)
    Task("winogrande", "allenai/winogrande", "winogrande_xl", "validation", "train",
         ("sentence", "option1", "option2", "answer"), _winogrande, length_normalized=False),
    # ANLI: does a premise entail, contradict or say nothing about a hypothesis, three adversarial rounds
    _anli_round(1), _anli_round(2), _anli_round(3),
    # HANS: entailment examples built to defeat the lexical-overlap heuristics NLI models learn
    Task("hans", "jhu-cogsci/hans", None, "validation", "train", ("premise", "hypothesis", "label"), _hans,
         hf_revision="refs/convert/parquet"),
    # WiC: is a word used with the same meaning in two sentences
    Task("wic", "aps/super_glue", "wic", "validation", "train", ("word", "sentence1", "sentence2", "label"), _wic),
]}
TASK_NAMES = tuple(TASKS)


# --- data --------------------------------------------------------------------------------------------

def local_path(data_dir: str | Path | None, task: Task, split: str) -> Path | None:
    return Path(data_dir) / task.name / f"{split}.jsonl" if data_dir else None


def load_records(task: Task, split: str, data_dir: str | Path | None = None) -> list[tuple[str, dict]]:
    """(where, record) of every record of a split: where names the file and line, or the hub row."""
    path = local_path(data_dir, task, split)
    if path is not None and path.is_file():
        return _read_jsonl(path)
    try:
        import datasets

        rows = datasets.load_dataset(task.hf_path, task.hf_name, split=split, revision=task.hf_revision)
    except Exception as e:  # no network, no such dataset or split, no datasets package: all say the same
        looked = f"{path} does not exist" if path else "evaluation.data_dir is null"
        reason = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise TaskDataError(
            f"task {task.name}: no data for split {split}: {looked}, and the hub dataset {task.hub_dataset} could "
            f"not be loaded ({type(e).__name__}: {reason}); put {split}.jsonl under evaluation.data_dir/{task.name}/ "
            "with one record per line in the hub dataset's columns") from None
    return [(f"{task.hf_path} {split} row {i}", dict(row)) for i, row in enumerate(rows)]


def _read_jsonl(path: Path) -> list[tuple[str, dict]]:
    return list(jsonl_records(path, TaskDataError))


def build_examples(task: Task, records: Sequence[tuple[str, dict]]) -> list[Example]:
    """Each record as an Example; a record without the task's columns, or with a label out of range,
    is refused with its file and line."""
    examples = []
    for where, record in records:
        missing = [name for name in task.fields if name not in record]
        if missing:
            raise TaskDataError(f"{where}: no {', '.join(missing)} field for task {task.name} (records follow the "
                                f"hub dataset {task.hub_dataset}: {', '.join(task.fields)})")
        try:
            example = task.build(record)
        except (KeyError, ValueError, TypeError, AttributeError, IndexError) as e:
            raise TaskDataError(f"{where}: cannot read this {task.name} record ({type(e).__name__}: {e})") from None
        if not 0 <= example.gold < len(example.choices):
            raise TaskDataError(f"{where}: gold answer {example.gold} is not one of the {len(example.choices)} "
                                f"choices (an unlabelled split? {task.name} is scored on {task.eval_split})")
        examples.append(example)
    return examples


def load_examples(task: Task, split: str, data_dir: str | Path | None = None, limit: int = 0) -> list[Example]:
    """The split's examples, the first `limit` of them when limit > 0."""
    records = load_records(task, split, data_dir)
    return build_examples(task, records[:limit] if limit else records)


def draw_shots(index: int, pool: Sequence[Example], num_fewshot: int, seed: int, same_split: bool) -> list[Example]:
    """num_fewshot examples of pool for the example at `index`, drawn by a generator seeded with seed
    and index: different shots for each example, the same ones on every run. When the pool is the
    evaluated split itself the example is never its own shot."""
    needed = num_fewshot + (1 if same_split else 0)
    if needed > len(pool):
        raise TaskDataError(f"evaluation.num_fewshot={num_fewshot} needs {needed} examples in the few-shot split, "
                            f"which has {len(pool)}: lower evaluation.num_fewshot")
    rng = random.Random(f"{seed}:{index}")
    chosen = [i for i in rng.sample(range(len(pool)), needed) if not (same_split and i == index)]
    return [pool[i] for i in chosen[:num_fewshot]]


def prepare_task(name: str, data_dir: str | Path | None = None, num_fewshot: int = 0, fewshot_seed: int = 1234,
                 limit: int = 0) -> TaskData:
    """Task `name`'s evaluation examples (the first `limit`, 0: all) with their few-shot demonstrations."""
    task = get_task(name)
    if num_fewshot == 0:
        return TaskData(task, load_examples(task, task.eval_split, data_dir, limit))
    same_split = task.fewshot_split == task.eval_split
    if same_split:
        pool = load_examples(task, task.eval_split, data_dir)
        examples = pool[:limit] if limit else pool
    else:
        examples = load_examples(task, task.eval_split, data_dir, limit)
        pool = load_examples(task, task.fewshot_split, data_dir)
    shots = [draw_shots(i, pool, num_fewshot, fewshot_seed, same_split) for i in range(len(examples))]
    return TaskData(task, examples, shots)


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise TaskDataError(f"evaluation.tasks: unknown task {name}: use one of {', '.join(TASK_NAMES)}")
    return TASKS[name]
