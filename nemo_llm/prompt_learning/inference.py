"""Learned prompts at inference: the base model with the baked prompt table and a tokenizer that
encodes the placeholders, ready for InferenceEngine (generate, score, the REST server).

The inference and evaluation stages can take a prompt_learning output this way:
    model, tokenizer = load_prompt_model(prompt_table_path, base_checkpoint=None, tokenizer=base_tokenizer)
    engine = InferenceEngine.from_model(model, tokenizer, state)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from nemo_llm.inference import InferenceEngine, SamplingParams
from nemo_llm.models.gpt import GPTModel
from nemo_llm.prompt_learning.prompts import attach_prompts, bake, base_fingerprint, read_prompt_file, virtual_tokens
from nemo_llm.prompt_learning.templates import PromptTokenizer
from nemo_llm.tokenizers import Tokenizer
from nemo_llm.training.checkpoint import load_model_from_checkpoint


def load_prompt_model(prompts_path: str | Path, base_tokenizer: Tokenizer, base_checkpoint: str | Path | None = None,
                      default_task: str | None = None,
                      device: str | torch.device = "cpu") -> tuple[GPTModel, PromptTokenizer]:
    """(base model with the prompts as tables, in eval mode; tokenizer of their placeholders) from a
    prompts.pt or prompt_table.pt. The base is the checkpoint the prompts name unless base_checkpoint
    is given; either way it must be the base they were learned on."""
    prompts = bake(read_prompt_file(prompts_path))
    base = Path(base_checkpoint or prompts["base"]["path"])
    model, meta = load_model_from_checkpoint(base)
    attach_prompts(model, prompts, base_fingerprint(model, meta["global_step"]), base)
    return model.to(device).eval(), PromptTokenizer(base_tokenizer, virtual_tokens(prompts), default_task)


def prompt_engine(prompts_path: str | Path, base_tokenizer: Tokenizer, base_checkpoint: str | Path | None = None,
                  default_task: str | None = None) -> InferenceEngine:
    """An InferenceEngine (one process) whose prompts may hold <|VIRTUAL_PROMPT_n|> placeholders."""
    model, tokenizer = load_prompt_model(prompts_path, base_tokenizer, base_checkpoint, default_task)
    return InferenceEngine.from_model(model, tokenizer)


def answer(engine: InferenceEngine, taskname: str, records: Sequence[Mapping[str, Any]],
           max_new_tokens: int = 32) -> list[str]:
    """Greedy answers of a task's records (their answer field is not read)."""
    tokenizer: PromptTokenizer = engine.tokenizer
    prompts = [tokenizer.prompt(taskname, record) for record in records]
    # Answers are short: never ask for more than the longest prompt leaves of the context.
    longest = max(len(tokenizer.encode(p)) for p in prompts)
    max_new_tokens = max(1, min(max_new_tokens, engine.max_sequence_length - longest))
    generations = engine.generate(prompts, SamplingParams(max_new_tokens=max_new_tokens, greedy=True))
    return [g.text.strip() for g in generations]


def task_accuracy(engine: InferenceEngine, records: Sequence[Mapping[str, Any]],
                  max_new_tokens: int = 32) -> dict[str, dict[str, float]]:
    """{taskname: {accuracy, examples}}: exact match of the greedy answer with the answer field."""
    tokenizer: PromptTokenizer = engine.tokenizer
    results = {}
    for name, task in tokenizer.virtual.tasks.items():
        rows = [r for r in records if r.get("taskname") == name]
        if not rows:
            continue
        predicted = answer(engine, name, rows, max_new_tokens)
        correct = sum(p == str(r[task.answer_field]).strip() for p, r in zip(predicted, rows))
        results[name] = {"accuracy": correct / len(rows), "examples": len(rows)}
    return results
