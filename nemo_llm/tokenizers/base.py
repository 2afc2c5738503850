"""The tokenizer interface that data preparation, training and generation share."""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Union

from omegaconf import OmegaConf

from nemo_llm.errors import NemoLLMError

if TYPE_CHECKING:
    from nemo_llm.config.schema import TokenizerConfig

# model.tokenizer as a DictConfig node, the schema's dataclass, or a plain dict (what crosses
# into multiprocessing workers, which cannot receive a Hydra node cheaply).
TokenizerSettings = Union["TokenizerConfig", Mapping[str, Any]]


class TokenizerError(NemoLLMError, ValueError):
    """A tokenizer that cannot be built from the config."""


class Tokenizer(ABC):
    """Text <-> token ids. `eod_id` ends each document in the indexed dataset."""

    @property
    @abstractmethod
    def vocab_size(self) -> int: ...

    @property
    @abstractmethod
    def eod_id(self) -> int: ...

    @abstractmethod
    def encode(self, text: str) -> list[int]: ...

    @abstractmethod
    def decode(self, ids: list[int]) -> str: ...

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """encode() of each text, on one thread: data preparation runs one worker process per core.
        (The tokenizers library's own batch call is slower than this loop when held to one thread.)"""
        return [self.encode(text) for text in texts]


def tokenizer_config(cfg: TokenizerSettings) -> TokenizerConfig:
    """cfg as the schema's TokenizerConfig: missing keys take its defaults, unknown keys are refused."""
    # Imported here: the config package imports the data library, which imports this one.
    from nemo_llm.config.schema import TokenizerConfig

    if isinstance(cfg, TokenizerConfig):
        return cfg
    if OmegaConf.is_config(cfg):
        cfg = OmegaConf.to_container(cfg, resolve=True)
    if not isinstance(cfg, Mapping):
        raise TokenizerError(f"model.tokenizer must be a mapping of tokenizer keys, not {type(cfg).__name__}")
    keys = [f.name for f in dataclasses.fields(TokenizerConfig)]
    unknown = sorted(set(cfg) - set(keys))
    if unknown:
        raise TokenizerError(f"model.tokenizer.{unknown[0]} is not a tokenizer key: use one of {', '.join(keys)}")
    return TokenizerConfig(**cfg)


def build_tokenizer(cfg: TokenizerSettings) -> Tokenizer:
    """The tokenizer that model.tokenizer describes (library sentencepiece, huggingface or byte)."""
    from nemo_llm.tokenizers.byte import ByteTokenizer
    from nemo_llm.tokenizers.huggingface import HuggingFaceTokenizer
    from nemo_llm.tokenizers.sentencepiece import SentencePieceTokenizer

    cfg = tokenizer_config(cfg)
    if cfg.library == "byte":
        return ByteTokenizer()
    if cfg.library == "sentencepiece":
        return SentencePieceTokenizer.from_config(cfg)
    if cfg.library == "huggingface":
        return HuggingFaceTokenizer.from_config(cfg)
    raise TokenizerError(f"model.tokenizer.library={cfg.library} is not supported: use sentencepiece, huggingface "
                         "or byte")
