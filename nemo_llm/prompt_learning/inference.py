"""Learned prompts at inference: the base model with the baked prompt table and a tokenizer that
encodes the placeholders, ready for InferenceEngine (generate, score, the REST server), and the
task metrics of the evaluation and prompt_learning stages.

The inference and evaluation stages take a prompt_learning output with inference.prompt_table /
evaluation.prompt_table (nemo_llm.inference.distributed.engine_from_config), at any model-parallel
layout.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from nemo_llm.inference import InferenceEngine, SamplingParams
from nemo_llm.models.gpt import GPTModel
from nemo_llm.prompt_learning.prompts import (PromptFileError, attach_prompts, bake, base_fingerprint,
                                              read_prompt_file, virtual_tokens)
from nemo_llm.prompt_learning.squad import exact_match, f1_score
from nemo_llm.prompt_learning.templates import PromptTokenizer
from nemo_llm.tokenizers import Tokenizer
from nemo_llm.training.checkpoint import last_checkpoint_path, load_model_from_checkpoint


def prompt_base(prompts_path: str | Path) -> Path:
    """The base checkpoint a prompt file was learned on."""
    return Path(read_prompt_file(prompts_path)["base"]["path"])


def load_prompt_model(prompts_path: str | Path, base_checkpoint: str | Path | None = None,
                      base_tokenizer: Tokenizer | None = None, default_task: str | None = None,
                      device: str | torch.device = "cpu") -> tuple[GPTModel, PromptTokenizer]:
    """(base model with the prompts as tables, in eval mode; tokenizer of their placeholders) from a
    prompts.pt or prompt_table.pt. The base is the checkpoint the prompts name unless base_checkpoint
    (a checkpoint or a run directory) is given; either way it must be the base they were learned on.
    The tokenizer is the base run's unless base_tokenizer is given. As nemo_llm.load does, the logits
    cover the tokenizer's vocabulary without the padding rows."""
    from nemo_llm.convert.hf import checkpoint_vocab_size
    from nemo_llm.convert.load import checkpoint_tokenizer, drop_vocab_padding

    prompts = bake(read_prompt_file(prompts_path))
    base = Path(base_checkpoint or prompts["base"]["path"])
    if base.is_dir() and last_checkpoint_path(base).exists():
        base = last_checkpoint_path(base)
    model, meta = load_model_from_checkpoint(base, map_location=device)
    attach_prompts(model, prompts, base_fingerprint(model, meta["global_step"]), base)
    tokenizer = base_tokenizer or checkpoint_tokenizer(base)
    if tokenizer is None:
        raise PromptFileError(f"{base}: no tokenizer goes with this base checkpoint; use a checkpoint inside its run "
                              "directory")
    vocab_size = checkpoint_vocab_size(base) or tokenizer.vocab_size
    if vocab_size < model.config.vocab_size:
        drop_vocab_padding(model, vocab_size)  # virtual ids keep their place after the padded vocabulary
    return model.to(device).eval(), PromptTokenizer(tokenizer, virtual_tokens(prompts), default_task)


def prompt_engine(prompts_path: str | Path, base_tokenizer: Tokenizer | None = None,
                  base_checkpoint: str | Path | None = None, default_task: str | None = None) -> InferenceEngine:
    """An InferenceEngine (one process) whose prompts may hold <|VIRTUAL_PROMPT_n|> placeholders."""
    model, tokenizer = load_prompt_model(prompts_path, base_checkpoint, base_tokenizer, default_task)
    return InferenceEngine.from_model(model, tokenizer)


def answer(engine: InferenceEngine, taskname: str, records: Sequence[Mapping[str, Any]],
           max_new_tokens: int = 32) -> list[str]:
    """Greedy answers of a task's records (their answer field is not read). Every model-parallel rank
    calls it with the same records."""
    tokenizer: PromptTokenizer = engine.tokenizer
    prompts = [tokenizer.prompt(taskname, record) for record in records]
    # Answers are short: never ask for more than the longest prompt leaves of the context.
    longest = max(len(tokenizer.encode(p)) for p in prompts)
    max_new_tokens = max(1, min(max_new_tokens, engine.max_sequence_length - longest))
    generations = engine.generate(prompts, SamplingParams(max_new_tokens=max_new_tokens, greedy=True))
    return [g.text.strip() for g in generations]


def task_accuracy(engine: InferenceEngine, records: Sequence[Mapping[str, Any]],
                  max_new_tokens: int = 32) -> dict[str, dict[str, float]]:
    """{taskname: {accuracy, exact_match, f1, examples}} of the greedy answers: accuracy is the exact
    string match with the answer field; exact_match and f1 are SQuAD's (normalised text, best over
    the record's "answers" list when it has one)."""
    tokenizer: PromptTokenizer = engine.tokenizer
    results = {}
    for name, task in tokenizer.virtual.tasks.items():
        rows = [r for r in records if r.get("taskname") == name]
        if not rows:
            continue
        predicted = answer(engine, name, rows, max_new_tokens)
        golds = [[str(a) for a in r["answers"]] if isinstance(r.get("answers"), list) and r["answers"]
                 else [str(r[task.answer_field])] for r in rows]
        n = len(rows)
        results[name] = {"accuracy": sum(p == str(r[task.answer_field]).strip() for p, r in zip(predicted, rows)) / n,
                         "exact_match": sum(exact_match(p, g) for p, g in zip(predicted, golds)) / n,
                         "f1": sum(f1_score(p, g) for p, g in zip(predicted, golds)) / n,
                         "examples": n}
    return results
