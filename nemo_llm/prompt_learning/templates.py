"""Task templates and the tokenizer that understands virtual-prompt placeholders.

A task's prompt_template mixes three kinds of pieces:
  <|VIRTUAL_PROMPT_n|>  the n-th run of learned virtual tokens (virtual_token_splits[n] of them),
  {field}               a field of the record,
  text                  anything else, literally.
The answer field ends the prompt: the model reads everything before it and learns to produce it.

Virtual tokens get ids >= the base model's (padded) vocabulary size, one block per task, so the
base model never sees them: VirtualPromptEmbedding (embedding.py) substitutes the learned vectors.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from nemo_llm.models.gpt import IGNORE_INDEX
from nemo_llm.tokenizers import Tokenizer

VIRTUAL_PROMPT = re.compile(r"<\|(?:([A-Za-z0-9_\-]+):)?VIRTUAL_PROMPT_(\d+)\|>")
FIELD = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


class TemplateError(ValueError):
    """A task template or record that cannot be turned into tokens."""


@dataclass
class TaskTemplate:
    """One task of prompt_learning.task_templates (NeMo's names)."""

    taskname: str
    prompt_template: str
    total_virtual_tokens: int
    virtual_token_splits: list[int] | None = None  # tokens per placeholder; null: all in <|VIRTUAL_PROMPT_0|>
    answer_field: str = "answer"
    answer_only_loss: bool = True
    truncation_field: str | None = None  # the field shortened when a record does not fit

    def __post_init__(self) -> None:
        placeholders = [int(m.group(2)) for m in VIRTUAL_PROMPT.finditer(self.prompt_template)]
        if sorted(placeholders) != list(range(len(placeholders))) or not placeholders:
            raise TemplateError(f"task {self.taskname}: prompt_template must hold <|VIRTUAL_PROMPT_0|> .. "
                                f"<|VIRTUAL_PROMPT_k|> once each, it holds {placeholders}")
        splits = list(self.virtual_token_splits or [self.total_virtual_tokens])
        if len(splits) != len(placeholders) or sum(splits) != self.total_virtual_tokens or min(splits) < 1:
            raise TemplateError(f"task {self.taskname}: virtual_token_splits {splits} must give each of the "
                                f"{len(placeholders)} placeholders at least one token and sum to total_virtual_tokens "
                                f"{self.total_virtual_tokens}")
        self.virtual_token_splits = splits
        if f"{{{self.answer_field}}}" not in self.prompt_template:
            raise TemplateError(f"task {self.taskname}: answer_field {self.answer_field!r} is not a "
                                f"{{{self.answer_field}}} in prompt_template")

    @property
    def fields(self) -> list[str]:
        return FIELD.findall(self.prompt_template)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class VirtualTokens:
    """Where each task's virtual tokens live in id space: task i owns ids start_i .. start_i + n_i - 1,
    after the base vocabulary (first_id) and after the tasks before it."""

    first_id: int
    tasks: dict[str, TaskTemplate] = field(default_factory=dict)

    def add(self, task: TaskTemplate) -> None:
        if task.taskname in self.tasks:
            raise TemplateError(f"task {task.taskname} is defined twice: tasknames must be unique")
        self.tasks[task.taskname] = task

    def start(self, taskname: str) -> int:
        start = self.first_id
        for name, task in self.tasks.items():
            if name == taskname:
                return start
            start += task.total_virtual_tokens
        raise TemplateError(f"unknown task {taskname!r}: known tasks are {', '.join(self.tasks) or 'none'}")

    @property
    def total(self) -> int:
        return sum(task.total_virtual_tokens for task in self.tasks.values())

    def placeholder_ids(self, taskname: str, index: int) -> list[int]:
        """The virtual ids that <|VIRTUAL_PROMPT_index|> of task taskname stands for."""
        begin = self.start(taskname)  # refuses an unknown task
        splits = self.tasks[taskname].virtual_token_splits
        if index >= len(splits):
            raise TemplateError(f"task {taskname} has placeholders 0..{len(splits) - 1}, not {index}")
        begin += sum(splits[:index])
        return list(range(begin, begin + splits[index]))


def _split_answer(template: str, answer_field: str) -> tuple[str, str, str]:
    """template -> (prompt part, whitespace before the answer, text after the answer field). The space
    that separates the prompt from the answer goes with the answer, so that a prompt ends on its last
    word and the answer starts with its own leading-space token, as generation produces it."""
    before, after = template.split(f"{{{answer_field}}}", 1)
    prompt = before.rstrip()
    return prompt, before[len(prompt):], after


class PromptTokenizer(Tokenizer):
    """A base tokenizer that also encodes <|VIRTUAL_PROMPT_n|> (of default_task) and
    <|taskname:VIRTUAL_PROMPT_n|> placeholders into virtual ids, so that InferenceEngine.generate
    and the REST server take learned prompts unchanged. Virtual ids decode to nothing; vocab_size
    stays the base's, so generation never samples a virtual id."""

    def __init__(self, base: Tokenizer, virtual: VirtualTokens, default_task: str | None = None):
        self.base = base
        self.virtual = virtual
        if default_task is None and len(virtual.tasks) == 1:
            default_task = next(iter(virtual.tasks))
        self.default_task = default_task

    @property
    def vocab_size(self) -> int:
        return self.base.vocab_size

    @property
    def eod_id(self) -> int:
        return self.base.eod_id

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        position = 0
        for match in VIRTUAL_PROMPT.finditer(text):
            if match.start() > position:
                ids += self.base.encode(text[position:match.start()])
            task = match.group(1) or self.default_task
            if task is None:
                raise TemplateError(f"{match.group(0)} names no task and there are several "
                                    f"({', '.join(self.virtual.tasks)}): write <|taskname:VIRTUAL_PROMPT_n|>")
            ids += self.virtual.placeholder_ids(task, int(match.group(2)))
            position = match.end()
        if position < len(text):
            ids += self.base.encode(text[position:])
        return ids

    def decode(self, ids: list[int]) -> str:
        return self.base.decode([i for i in ids if i < self.virtual.first_id])

    def prompt(self, taskname: str, record: Mapping[str, Any]) -> str:
        """The task's template filled from record up to (not including) the answer: the text to give
        generate() (with placeholders) to get the answer."""
        task = self.virtual.tasks[taskname]
        prompt, _, _ = _split_answer(task.prompt_template, task.answer_field)
        return _fill(prompt, record, task).replace("<|VIRTUAL_PROMPT_", f"<|{taskname}:VIRTUAL_PROMPT_")

    def encode_example(self, taskname: str, record: Mapping[str, Any], max_length: int,
                       with_answer: bool = True) -> tuple[list[int], int] | None:
        """(ids, answer_start) of a record: ids are the prompt, then the answer and end-of-document
        when with_answer; ids[answer_start:] is the answer. At most max_length ids: the
        truncation_field is shortened as needed; None when the record cannot fit."""
        task = self.virtual.tasks[taskname]
        prompt_template, space, after = _split_answer(task.prompt_template, task.answer_field)
        answer: list[int] = []
        if with_answer:
            answer = self.base.encode(space + _fill(f"{{{task.answer_field}}}" + after, record, task))
            answer.append(self.eod_id)
        record = dict(record)
        for _ in range(8):  # each pass cuts the field by what is still too long; token counts shift a little
            prompt = self.encode(_fill(prompt_template, record, task).replace(
                "<|VIRTUAL_PROMPT_", f"<|{taskname}:VIRTUAL_PROMPT_"))
            excess = len(prompt) + len(answer) - max_length
            if excess <= 0:
                return prompt + answer, len(prompt)
            field_name = task.truncation_field
            if field_name is None or not record.get(field_name):
                return None
            value = self.base.encode(str(record[field_name]))
            record[field_name] = self.base.decode(value[:max(0, len(value) - excess)])
        return None


def _fill(template: str, record: Mapping[str, Any], task: TaskTemplate) -> str:
    def value(match: re.Match) -> str:
        name = match.group(1)
        if name not in record:
            raise TemplateError(f"task {task.taskname}: record has no field {name!r} that prompt_template uses "
                                f"(fields: {', '.join(sorted(record))})")
        return str(record[name])

    return FIELD.sub(value, template)


def example_labels(ids: Sequence[int], answer_start: int, first_virtual_id: int,
                   answer_only_loss: bool) -> tuple[list[int], list[int]]:
    """(tokens, labels) of one example: tokens = ids[:-1], labels = ids[1:] with IGNORE_INDEX where no
    loss is taken (the prompt when answer_only_loss, virtual tokens always)."""
    tokens, labels = list(ids[:-1]), list(ids[1:])
    for i, target in enumerate(labels):
        if target >= first_virtual_id or (answer_only_loss and i + 1 < answer_start):
            labels[i] = IGNORE_INDEX
    return tokens, labels
