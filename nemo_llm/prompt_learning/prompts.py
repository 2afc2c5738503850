"""Prompt files: the learned prompts alone, next to a reference to the base checkpoint.

A prompt file (torch.save of plain types, read with weights_only=True) holds
  format, first_virtual_id, hidden_size,
  tasks:       {taskname: {template: TaskTemplate fields, style: p-tuning | prompt-tuning, p_tuning: {...}}}
               in virtual-id order,
  state_dict:  {<taskname>.<param>: tensor} of the prompt modules,
  base:        {path, fingerprint} of the base checkpoint they were learned on.
Baking turns every p-tuning task into a prompt-tuning table of its encoder's output (eval mode),
which is all inference needs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from nemo_llm.errors import NemoLLMError
from nemo_llm.models.gpt import GPTModel
from nemo_llm.prompt_learning.embedding import (PromptEncoder, PromptTable, VirtualPromptEmbedding, initial_vectors,
                                                wrap_embedding)
from nemo_llm.prompt_learning.templates import TaskTemplate, VirtualTokens

FORMAT = "nemo_llm.prompt_learning/1"
STYLES = ("p-tuning", "prompt-tuning")


class PromptFileError(NemoLLMError, ValueError):
    """A prompt file that is unreadable or does not fit the base model."""


def base_fingerprint(model: GPTModel, global_step: int | None) -> dict[str, Any]:
    """What identifies a base model: its shape, its training step and a float64 sum of every weight
    (any change of any weight changes it)."""
    c = model.config
    with torch.no_grad():
        checksum = sum(float(p.detach().double().sum()) for name, p in model.named_parameters()
                       if not name.startswith("embedding.prompts."))
    return {"global_step": global_step, "vocab_size": c.vocab_size, "hidden_size": c.hidden_size,
            "num_layers": c.num_layers, "checksum": checksum}


def check_base(prompts: dict[str, Any], fingerprint: dict[str, Any], base_path: str | Path) -> None:
    """Refuse a base model other than the one the prompts were learned on."""
    expected = prompts["base"]["fingerprint"]
    if expected != fingerprint:
        differs = ", ".join(f"{k} {expected.get(k)} vs {fingerprint.get(k)}" for k in expected
                            if expected.get(k) != fingerprint.get(k))
        raise PromptFileError(f"the prompts were learned on base {prompts['base']['path']}, which differs from "
                              f"{base_path} ({differs}): set prompt_learning.language_model_path to that base")


def add_task(model: GPTModel, task: TaskTemplate, style: str, p_tuning: dict[str, Any], seed: int) -> None:
    """A new task's prompt module, freshly initialised, after the existing tasks' ones."""
    embedding = wrap_embedding(model)
    init = initial_vectors(model, task.total_virtual_tokens, seed)
    embedding.prompts[task.taskname] = _prompt_module(init, style, p_tuning)
    embedding.prompts[task.taskname].to(init.device if init.device.type != "meta" else "cpu")


def _prompt_module(init: torch.Tensor, style: str, p_tuning: dict[str, Any]) -> torch.nn.Module:
    if style == "prompt-tuning":
        return PromptTable(init)
    if style == "p-tuning":
        return PromptEncoder(init, p_tuning["encoder_type"], p_tuning["encoder_hidden"], p_tuning["num_layers"],
                             p_tuning["dropout"])
    raise ValueError(f"virtual_prompt_style {style!r}: use one of {', '.join(STYLES)}")


def virtual_tokens(prompts: dict[str, Any]) -> VirtualTokens:
    """The id layout of a prompt file's tasks."""
    vocab = VirtualTokens(prompts["first_virtual_id"])
    for entry in prompts["tasks"].values():
        vocab.add(TaskTemplate(**entry["template"]))
    return vocab


def build_prompt_file(model: GPTModel, tasks: dict[str, dict[str, Any]], state_dict: dict[str, torch.Tensor],
                      base_path: str, fingerprint: dict[str, Any]) -> dict[str, Any]:
    embedding = model.embedding
    assert isinstance(embedding, VirtualPromptEmbedding), "the model has no prompts: call add_task first"
    return {"format": FORMAT, "first_virtual_id": embedding.first_virtual_id, "hidden_size": model.config.hidden_size,
            "tasks": tasks, "state_dict": state_dict, "base": {"path": str(base_path), "fingerprint": fingerprint}}


def save_prompt_file(prompts: dict[str, Any], path: str | Path) -> Path:
    """Write atomically (a crash leaves the previous file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".tmp")
    torch.save(prompts, partial)
    partial.replace(path)
    return path


def read_prompt_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise PromptFileError(f"{path}: no prompt file there; run the prompt_learning stage first")
    try:
        prompts = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise PromptFileError(f"{path}: cannot be read as a prompt file ({type(e).__name__})") from None
    if not isinstance(prompts, dict) or prompts.get("format") != FORMAT:
        raise PromptFileError(f"{path}: not a prompt file of nemo_llm prompt learning (format {FORMAT})")
    return prompts


def attach_prompts(model: GPTModel, prompts: dict[str, Any], fingerprint: dict[str, Any] | None = None,
                   base_path: str | Path = "the given base") -> GPTModel:
    """Give model (the base, full, before any parallelism) the prompt modules of a prompt file, in its
    task order; with a fingerprint, first check that the base is the one they were learned on."""
    if fingerprint is not None:
        check_base(prompts, fingerprint, base_path)
    if prompts["hidden_size"] != model.config.hidden_size or prompts["first_virtual_id"] != model.config.vocab_size:
        raise PromptFileError(f"the prompts are for hidden size {prompts['hidden_size']} and vocabulary "
                              f"{prompts['first_virtual_id']}, the model has {model.config.hidden_size} and "
                              f"{model.config.vocab_size}: set prompt_learning.language_model_path to their base")
    embedding = wrap_embedding(model)
    device = model.embedding.word_embeddings.weight.device
    for name, entry in prompts["tasks"].items():
        n = entry["template"]["total_virtual_tokens"]
        placeholder = torch.zeros(n, prompts["hidden_size"])
        embedding.prompts[name] = _prompt_module(placeholder, entry["style"], entry.get("p_tuning") or {})
        own = {k[len(name) + 1:]: v for k, v in prompts["state_dict"].items() if k.startswith(f"{name}.")}
        embedding.prompts[name].load_state_dict(own)
        embedding.prompts[name].to(device)
    return model


@torch.no_grad()
def bake(prompts: dict[str, Any]) -> dict[str, Any]:
    """The same prompts with every p-tuning encoder replaced by the table of its output (eval mode:
    no dropout), which gives the model identical embeddings and needs no encoder at inference."""
    baked = {**prompts, "tasks": {}, "state_dict": {}}
    for name, entry in prompts["tasks"].items():
        own = {k[len(name) + 1:]: v for k, v in prompts["state_dict"].items() if k.startswith(f"{name}.")}
        if entry["style"] == "p-tuning":
            n = entry["template"]["total_virtual_tokens"]
            module = _prompt_module(torch.zeros(n, prompts["hidden_size"]), "p-tuning", entry["p_tuning"])
            module.load_state_dict(own)
            own = {"weight": module.eval()().detach().clone()}
        baked["tasks"][name] = {**entry, "style": "prompt-tuning", "p_tuning": None}
        baked["state_dict"].update({f"{name}.{k}": v for k, v in own.items()})
    return baked
