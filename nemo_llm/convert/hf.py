"""Hugging Face folder <-> nemo_llm checkpoint.

import_hf writes the single-file .ckpt the training stage writes (so evaluation and
nemo_llm.load read it like any other), the tokenizer files beside it and `nemo_llm.json`, which
says which model.tokenizer settings go with it. The vocabulary is kept at the Hugging Face size,
not padded: padded rows would add logits to every softmax that the imported model never learned
to push down. export_hf writes config.json + model.safetensors (+ tokenizer files) that
transformers' from_pretrained loads.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from nemo_llm.convert.architectures import (GPT2, ConversionError, HFArchitecture, architecture_for,
                                            architecture_of, convert_state)
from nemo_llm.convert.hf_files import (CONFIG_FILE, SAFETENSORS_FILE, copy_tokenizer, find_tokenizer, read_hf_config,
                                       read_hf_weights, write_safetensors, write_tokenizer)
from nemo_llm.models.gpt import GPTConfig, GPTModel
from nemo_llm.tokenizers import Tokenizer, TokenizerError, build_tokenizer
from nemo_llm.training.checkpoint import DCP_META_FILE

CHECKPOINT_FILE = "model.ckpt"
MODEL_INFO_FILE = "nemo_llm.json"  # beside an imported checkpoint: its tokenizer settings and origin
CONVERSION_KEY = "conversion"  # in the checkpoint: {vocab_size (real, unpadded), architecture, source}
_MAX_LISTED = 6  # mismatched tensors named in one error line


@dataclass
class HFModel:
    """A Hugging Face checkpoint in our terms: state uses our parameter names (no 'model.' prefix)."""

    config: GPTConfig
    state: dict[str, torch.Tensor]
    architecture: str
    tokenizer: dict[str, Any] | None  # model.tokenizer settings with absolute paths; None: no tokenizer files


def expected_hf_shapes(arch: HFArchitecture, config: GPTConfig) -> dict[str, tuple[int, ...]]:
    """The tensors, and their shapes, that a checkpoint with this config must hold."""
    # On the meta device nothing is allocated, so this costs nothing whatever the model size.
    with torch.device("meta"):
        model = GPTModel(config)
    hf = convert_state(arch.rules(config), model.state_dict(), to_hf=True)
    return {key: tuple(value.shape) for key, value in hf.items()}


def check_weights(weights: Mapping[str, torch.Tensor], expected: Mapping[str, tuple[int, ...]], source: Path,
                  arch: HFArchitecture) -> None:
    """One line naming every tensor that is missing, unexpected or of the wrong shape (the first few)."""
    problems = [f"{key} has shape {list(weights[key].shape)} where config.json implies {list(shape)}"
                for key, shape in expected.items() if key in weights and tuple(weights[key].shape) != shape]
    problems += [f"{key} is missing" for key in expected if key not in weights]
    problems += [f"{key} is not a {arch.name} weight" for key in weights if key not in expected]
    if problems:
        more = f" (and {len(problems) - _MAX_LISTED} more)" if len(problems) > _MAX_LISTED else ""
        raise ConversionError(f"{source}: the weights do not match config.json: {'; '.join(problems[:_MAX_LISTED])}"
                              f"{more}; check that config.json and the weight files come from the same model")


def read_hf_model(hf_dir: str | Path) -> HFModel:
    """Config and weights of a GPT-2 or Llama folder, converted to our config and parameter names."""
    hf_dir = Path(hf_dir)
    hf_config = read_hf_config(hf_dir)
    arch = architecture_of(hf_config)
    config = arch.config_from_hf(hf_config)
    weights = {arch.canonical_key(key): value for key, value in read_hf_weights(hf_dir).items()
               if not arch.ignored(key)}
    if config.share_embeddings_and_output_weights:
        weights.pop("lm_head.weight", None)  # some writers store the tied copy too
    check_weights(weights, expected_hf_shapes(arch, config), hf_dir, arch)
    state = {key: value.contiguous() for key, value in convert_state(arch.rules(config), weights, to_hf=False).items()}
    if config.share_embeddings_and_output_weights:
        state["output_layer.weight"] = state["embedding.word_embeddings.weight"]
    return HFModel(config, state, arch.name, find_tokenizer(hf_dir, hf_config))


def tokenizer_or_warn(settings: Mapping[str, Any] | None, where: Path) -> Tokenizer | None:
    """The tokenizer `settings` describe, or None with a warning saying why there is none."""
    if settings is None:
        warnings.warn(f"{where}: no tokenizer files (tokenizer.json, vocab.json + merges.txt or tokenizer.model) "
                      "next to the model, so the tokenizer is None", stacklevel=3)
        return None
    try:
        return build_tokenizer(dict(settings))
    except TokenizerError as e:
        warnings.warn(f"{where}: the tokenizer cannot be used ({e}), so it is None", stacklevel=3)
        return None


def write_checkpoint(path: Path, config: GPTConfig, state: Mapping[str, torch.Tensor],
                     conversion: Mapping[str, Any]) -> None:
    """The single-file checkpoint layout of the training stage, as load_model_from_checkpoint reads it."""
    checkpoint = {
        "state_dict": {f"model.{key}": value for key, value in state.items()},
        "hyper_parameters": {"gpt_config": asdict(config)},
        "global_step": 0,
        "consumed_samples": 0,
        CONVERSION_KEY: dict(conversion),
    }
    # Written whole, then renamed: a crash never leaves a truncated checkpoint under the final name.
    tmp = path.with_name(path.name + ".tmp")
    torch.save(checkpoint, tmp)
    tmp.replace(path)


def checkpoint_vocab_size(path: Path) -> int | None:
    """The real (unpadded) vocabulary an imported checkpoint records; None for one the training stage wrote."""
    try:
        # mmap: the tensors are not read, only the small dicts around them.
        checkpoint = torch.load(path / DCP_META_FILE if path.is_dir() else path, map_location="cpu",
                                weights_only=True, mmap=True)
    except Exception:  # load_model_from_checkpoint already reported unreadable files; no metadata is no answer
        return None
    return (checkpoint.get(CONVERSION_KEY) or {}).get("vocab_size")


def import_hf(hf_dir: str | Path, out_dir: str | Path) -> Path:
    """Convert a Hugging Face GPT2LMHeadModel or LlamaForCausalLM folder into out_dir; returns the checkpoint
    (<out_dir>/model.ckpt), which evaluation.checkpoint and nemo_llm.load accept.

    Reads config.json and model.safetensors, sharded safetensors or pytorch_model.bin (weights only).
    Raises ConversionError for other architectures, for config fields whose math our model lacks
    (rope_scaling, attention biases, ...) and for weights that do not match config.json."""
    hf_dir, out_dir = Path(hf_dir), Path(out_dir)
    if out_dir.resolve() == hf_dir.resolve():
        raise ConversionError(f"{out_dir}: the output folder is the Hugging Face folder itself; choose another one")
    model = read_hf_model(hf_dir)
    tokenizer = model.tokenizer if tokenizer_or_warn(model.tokenizer, hf_dir) is not None else None
    out_dir.mkdir(parents=True, exist_ok=True)
    source = {"architecture": model.architecture, "source": str(hf_dir.resolve())}
    checkpoint = out_dir / CHECKPOINT_FILE
    write_checkpoint(checkpoint, model.config, model.state, {"vocab_size": model.config.vocab_size, **source})
    info = {"checkpoint": CHECKPOINT_FILE, "tokenizer": copy_tokenizer(tokenizer, out_dir) if tokenizer else None,
            **source}
    (out_dir / MODEL_INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    return checkpoint


def _real_vocab_size(config: GPTConfig, tokenizer: Tokenizer | None, vocab_size: int | None) -> int:
    if vocab_size is None and tokenizer is not None:
        if tokenizer.vocab_size > config.vocab_size:
            raise ConversionError(f"the tokenizer has {tokenizer.vocab_size} ids but the model embeds only "
                                  f"{config.vocab_size}: export it with the tokenizer it was trained with")
        vocab_size = tokenizer.vocab_size
    vocab_size = config.vocab_size if vocab_size is None else vocab_size
    if not 1 <= vocab_size <= config.vocab_size:
        raise ConversionError(f"vocab_size={vocab_size} must be between 1 and the model's {config.vocab_size}")
    return vocab_size


def export_hf(model: GPTModel, out_dir: str | Path, tokenizer: Tokenizer | None = None,
              vocab_size: int | None = None) -> Path:
    """Write `model` to out_dir as a Hugging Face folder (config.json, model.safetensors and, with a
    tokenizer, its files and tokenizer_config.json); returns out_dir.

    Learned positions + LayerNorm + GELU export as GPT2LMHeadModel, RoPE + RMSNorm + SwiGLU without
    biases as LlamaForCausalLM; other models raise ConversionError. The vocabulary padding is dropped:
    vocab_size is the real vocabulary (default: the tokenizer's, else all the model's rows)."""
    out_dir = Path(out_dir)
    arch = architecture_for(model.config)
    vocab = _real_vocab_size(model.config, tokenizer, vocab_size)
    config = replace(model.config, vocab_size=vocab)
    state = dict(model.state_dict())
    for key in ("embedding.word_embeddings.weight", "output_layer.weight"):
        state[key] = state[key][:vocab]
    hf_state = convert_state(arch.rules(config), state, to_hf=True)
    eod = tokenizer.eod_id if tokenizer is not None else None
    hf_config = {
        **arch.config_to_hf(config),
        # GPT-2 starts and ends documents with the same token; Llama's BOS is not known here.
        "bos_token_id": eod if isinstance(arch, GPT2) else None,
        "eos_token_id": eod,
        "torch_dtype": str(state["embedding.word_embeddings.weight"].dtype).removeprefix("torch."),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    write_safetensors(hf_state, out_dir / SAFETENSORS_FILE)
    (out_dir / CONFIG_FILE).write_text(json.dumps(hf_config, indent=2) + "\n")
    if tokenizer is not None:
        write_tokenizer(tokenizer, out_dir, config.max_position_embeddings)
    return out_dir
