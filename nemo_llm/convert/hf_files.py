"""The files of a Hugging Face model folder: config.json, the weights in any of the layouts
save_pretrained writes, and the tokenizer files. Reading never runs pickled code."""

from __future__ import annotations

import json
import shutil
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from nemo_llm.convert.architectures import ConversionError
from nemo_llm.tokenizers import ByteTokenizer, HuggingFaceTokenizer, SentencePieceTokenizer, Tokenizer

CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
TORCH_FILE = "pytorch_model.bin"
TORCH_INDEX = "pytorch_model.bin.index.json"
TOKENIZER_JSON = "tokenizer.json"
GPT2_VOCAB, GPT2_MERGES = "vocab.json", "merges.txt"
SENTENCEPIECE_MODEL = "tokenizer.model"
TOKENIZER_CONFIG = "tokenizer_config.json"


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ConversionError(f"{path}: cannot be read as JSON ({type(e).__name__}: {e})") from None


def read_hf_config(hf_dir: Path) -> dict[str, Any]:
    path = hf_dir / CONFIG_FILE
    if not path.is_file():
        raise ConversionError(f"{hf_dir}: no {CONFIG_FILE}; point at a folder written by save_pretrained")
    return read_json(path)


def _read_weight_file(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ConversionError(f"{path}: missing, but the folder's index lists it; download the whole checkpoint")
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        # weights_only: a checkpoint holding anything but tensors is refused, never executed.
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # a foreign pickle, a truncated file, a bad header: all say the same to the user
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConversionError(f"{path}: cannot be read as weights ({reason})") from None


def read_hf_weights(hf_dir: Path) -> dict[str, torch.Tensor]:
    """All tensors of the folder: model.safetensors, shards listed by model.safetensors.index.json, or
    the same two for pytorch_model.bin; safetensors first, as transformers prefers them."""
    for single, index in ((SAFETENSORS_FILE, SAFETENSORS_INDEX), (TORCH_FILE, TORCH_INDEX)):
        if (hf_dir / single).is_file():
            return _read_weight_file(hf_dir / single)
        if (hf_dir / index).is_file():
            shards = sorted(set(read_json(hf_dir / index).get("weight_map", {}).values()))
            if not shards:
                raise ConversionError(f"{hf_dir / index}: its weight_map lists no shard")
            state: dict[str, torch.Tensor] = {}
            for shard in shards:
                state.update(_read_weight_file(hf_dir / shard))
            return state
    raise ConversionError(f"{hf_dir}: no weights; expected {SAFETENSORS_FILE}, {SAFETENSORS_INDEX} with its shards, "
                          f"or {TORCH_FILE}")


def write_safetensors(state: Mapping[str, torch.Tensor], path: Path) -> None:
    # Separate, contiguous copies: safetensors refuses tensors that share memory, and the q/k/v rows
    # split from one fused weight do. "format: pt" is the metadata transformers checks for.
    tensors = {key: value.detach().to("cpu", copy=True).contiguous() for key, value in state.items()}
    save_file(tensors, str(path), metadata={"format": "pt"})


# --- tokenizer files -------------------------------------------------------------------------------

PATH_KEYS = ("model", "vocab_file", "merge_file")  # the model.tokenizer keys that name files


def _token_content(token: Any) -> str | None:
    # tokenizer_config.json writes a special token as a string or as {"content": ..., ...}.
    return token.get("content") if isinstance(token, dict) else token


def _declared_eos(hf_dir: Path) -> str | None:
    for name in (TOKENIZER_CONFIG, "special_tokens_map.json"):
        if (hf_dir / name).is_file():
            eos = _token_content(read_json(hf_dir / name).get("eos_token"))
            if eos:
                return eos
    return None


def find_tokenizer(hf_dir: Path, hf_config: Mapping[str, Any]) -> dict[str, Any] | None:
    """model.tokenizer settings (absolute paths) for the tokenizer files in hf_dir, or None when there are none.

    The end-of-document token is the folder's declared eos_token, else the token of config.json's
    eos_token_id, else the library's default."""
    eos_id = hf_config.get("eos_token_id")
    eos_id = eos_id[0] if isinstance(eos_id, list) and eos_id else eos_id
    eos = _declared_eos(hf_dir)
    if (hf_dir / TOKENIZER_JSON).is_file():
        settings = {"library": "huggingface", "model": str(hf_dir / TOKENIZER_JSON)}
        if eos is None and isinstance(eos_id, int):
            eos = _tokenizer_json_token(hf_dir / TOKENIZER_JSON, eos_id)
    elif (hf_dir / GPT2_VOCAB).is_file() and (hf_dir / GPT2_MERGES).is_file():
        settings = {"library": "huggingface", "vocab_file": str(hf_dir / GPT2_VOCAB),
                    "merge_file": str(hf_dir / GPT2_MERGES)}
        if eos is None and isinstance(eos_id, int):
            eos = {i: t for t, i in read_json(hf_dir / GPT2_VOCAB).items()}.get(eos_id)
    elif (hf_dir / SENTENCEPIECE_MODEL).is_file():
        # Without a declared eos, the sentencepiece tokenizer falls back to the model's own EOS piece.
        settings = {"library": "sentencepiece", "model": str(hf_dir / SENTENCEPIECE_MODEL)}
    else:
        return None
    return {**settings, "eod_token": eos}


def _tokenizer_json_token(path: Path, token_id: int) -> str | None:
    from tokenizers import Tokenizer as HFTokenizer

    try:
        return HFTokenizer.from_file(str(path)).id_to_token(token_id)
    except Exception:  # the library raises a bare Exception; building the tokenizer later reports it
        return None


def copy_tokenizer(settings: Mapping[str, Any], out_dir: Path) -> dict[str, Any]:
    """Copy the files `settings` names into out_dir; returns the settings with names relative to out_dir."""
    copied = dict(settings)
    for key in PATH_KEYS:
        if settings.get(key):
            source = Path(settings[key])
            shutil.copyfile(source, out_dir / source.name)
            copied[key] = source.name
    return copied


def resolve_tokenizer(settings: Mapping[str, Any], base: Path) -> dict[str, Any]:
    """Settings whose relative file names are taken relative to `base`."""
    return {key: str(base / value) if key in PATH_KEYS and value and not Path(value).is_absolute() else value
            for key, value in settings.items()}


def write_tokenizer(tokenizer: Tokenizer, out_dir: Path, model_max_length: int) -> list[str]:
    """Tokenizer files transformers reads (AutoTokenizer), next to the exported model; returns their names."""
    if isinstance(tokenizer, HuggingFaceTokenizer):
        tokenizer.backend.save(str(out_dir / TOKENIZER_JSON))
        eos = tokenizer.backend.id_to_token(tokenizer.eod_id)
        tokenizer_config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": eos}
        written = [TOKENIZER_JSON]
    elif isinstance(tokenizer, SentencePieceTokenizer):
        shutil.copyfile(tokenizer.model_path, out_dir / SENTENCEPIECE_MODEL)
        import sentencepiece as spm

        eos = spm.SentencePieceProcessor(model_file=tokenizer.model_path).id_to_piece(tokenizer.eod_id)
        # Ours are trained without BOS/EOS insertion; LlamaTokenizer's defaults would add a BOS.
        tokenizer_config = {"tokenizer_class": "LlamaTokenizer", "eos_token": eos, "add_bos_token": False,
                            "add_eos_token": False}
        written = [SENTENCEPIECE_MODEL]
    else:
        kind = "the byte tokenizer" if isinstance(tokenizer, ByteTokenizer) else type(tokenizer).__name__
        warnings.warn(f"{kind} has no Hugging Face tokenizer file: {out_dir} holds the model only", stacklevel=3)
        return []
    tokenizer_config["model_max_length"] = model_max_length
    (out_dir / TOKENIZER_CONFIG).write_text(json.dumps(tokenizer_config, indent=2) + "\n")
    return [*written, TOKENIZER_CONFIG]
