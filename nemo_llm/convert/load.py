"""nemo_llm.load: one call from any model path to (model, tokenizer)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import nn

from nemo_llm.convert.architectures import ConversionError
from nemo_llm.convert.hf import MODEL_INFO_FILE, checkpoint_vocab_size, read_hf_model, tokenizer_or_warn
from nemo_llm.convert.hf_files import CONFIG_FILE, PATH_KEYS, read_json, resolve_tokenizer
from nemo_llm.models.gpt import GPTModel
from nemo_llm.tokenizers import Tokenizer
from nemo_llm.training.checkpoint import (CHECKPOINT_DIR, DCP_META_FILE, last_checkpoint_path,
                                          load_model_from_checkpoint)

RUN_CONFIG_FILE = "config.yaml"  # what main.py writes into every run directory


def load(path: str | Path, device: str | torch.device = "cpu") -> tuple[GPTModel, Tokenizer | None]:
    """(model in eval mode, tokenizer or None) from any of:

    - a checkpoint: a .ckpt file, or the directory of a multi-process (DCP) checkpoint;
    - an import_hf output folder, or a training run directory (its checkpoints/last.ckpt);
    - a Hugging Face GPT-2 or Llama folder, converted in memory.

    `model(input_ids)` maps [batch, seq] int64 to logits [batch, seq, vocab] over the real vocabulary:
    the rows Megatron padding added are dropped when the vocabulary is known (the checkpoint's
    metadata or the tokenizer's size), else they stay. The tokenizer is None, with a warning, when no
    tokenizer files go with the model."""
    path = Path(path)
    if path.is_dir() and (path / MODEL_INFO_FILE).is_file():
        model, tokenizer = _load_checkpoint(path / read_json(path / MODEL_INFO_FILE)["checkpoint"], device)
    elif path.is_file() or (path / DCP_META_FILE).is_file():
        model, tokenizer = _load_checkpoint(path, device)
    elif (path / CONFIG_FILE).is_file():
        model, tokenizer = _load_hf(path, device)
    elif last_checkpoint_path(path).exists():
        model, tokenizer = _load_checkpoint(last_checkpoint_path(path), device)
    else:
        raise ConversionError(f"{path}: not a model: expected a .ckpt file or checkpoint directory, an import_hf "
                              f"output ({MODEL_INFO_FILE}), a run directory with {CHECKPOINT_DIR}/last.ckpt, or a "
                              f"Hugging Face folder with {CONFIG_FILE}")
    return model, tokenizer


def _load_hf(hf_dir: Path, device: str | torch.device) -> tuple[GPTModel, Tokenizer | None]:
    hf = read_hf_model(hf_dir)
    model = GPTModel(hf.config)
    model.load_state_dict(hf.state)
    return model.to(device).eval(), tokenizer_or_warn(hf.tokenizer, hf_dir)


def checkpoint_tokenizer(checkpoint: str | Path) -> Tokenizer | None:
    """The tokenizer that goes with a checkpoint of ours (None, with a warning, when none does)."""
    return tokenizer_or_warn(_tokenizer_settings(Path(checkpoint)), Path(checkpoint))


def _load_checkpoint(checkpoint: Path, device: str | torch.device) -> tuple[GPTModel, Tokenizer | None]:
    model, _ = load_model_from_checkpoint(checkpoint, map_location=device)
    tokenizer = checkpoint_tokenizer(checkpoint)
    vocab_size = checkpoint_vocab_size(checkpoint) or (tokenizer.vocab_size if tokenizer is not None else None)
    if vocab_size is not None and vocab_size < model.config.vocab_size:
        drop_vocab_padding(model, vocab_size)
    return model, tokenizer


def _tokenizer_settings(checkpoint: Path) -> dict[str, Any] | None:
    """The tokenizer that goes with a checkpoint: the one import_hf copied beside it, or the one of the
    run whose checkpoints/ holds it."""
    info = checkpoint.parent / MODEL_INFO_FILE
    if info.is_file():
        settings = read_json(info).get("tokenizer")
        return resolve_tokenizer(settings, info.parent) if settings else None
    run_dir = checkpoint.parent.parent
    if checkpoint.parent.name == CHECKPOINT_DIR and (run_dir / RUN_CONFIG_FILE).is_file():
        return _run_tokenizer_settings(run_dir)
    return None


def _run_tokenizer_settings(run_dir: Path) -> dict[str, Any] | None:
    cfg = OmegaConf.load(run_dir / RUN_CONFIG_FILE)
    settings = OmegaConf.select(cfg, "model.tokenizer")
    if settings is None:
        return None
    settings = OmegaConf.to_container(settings, resolve=True)
    # config.yaml records paths as the run saw them, often relative to where it was launched
    # (results/<run>/data/tokenizer.model); a run directory that moved, or a different working
    # directory, still finds its files under the run directory itself.
    recorded_run_dir = Path(str(OmegaConf.select(cfg, "run_dir") or run_dir))
    for key in PATH_KEYS:
        value = settings.get(key)
        if value and not Path(value).is_file() and Path(value).is_relative_to(recorded_run_dir):
            settings[key] = str(run_dir / Path(value).relative_to(recorded_run_dir))
    return settings


@torch.no_grad()
def drop_vocab_padding(model: GPTModel, vocab_size: int) -> None:
    """Keep the first vocab_size rows of the embedding and output layer, in place: the logits then cover
    exactly the tokenizer's ids."""
    embedding = model.embedding.word_embeddings
    embedding.weight = nn.Parameter(embedding.weight[:vocab_size].clone())
    embedding.num_embeddings = vocab_size
    if model.config.share_embeddings_and_output_weights:
        model.output_layer.weight = embedding.weight
    else:
        model.output_layer.weight = nn.Parameter(model.output_layer.weight[:vocab_size].clone())
    model.output_layer.out_features = vocab_size
    model.config = replace(model.config, vocab_size=vocab_size)
