"""The tokenizer interface that data preparation, training and generation share."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

from nemo_llm.errors import NemoLLMError


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


def build_tokenizer(library: str, model: str | None = None) -> Tokenizer:
    """The tokenizer a config names: model.tokenizer.library and model.tokenizer.model."""
    from nemo_llm.tokenizers.byte import ByteTokenizer
    from nemo_llm.tokenizers.sentencepiece import SentencePieceTokenizer

    if library == "byte":
        return ByteTokenizer()
    if library == "sentencepiece":
        if model is None or not Path(model).is_file():
            raise TokenizerError(
                f"model.tokenizer.model={model}: no sentencepiece model there; run the data_preparation "
                "stage (it trains one) or point model.tokenizer.model at a .model file"
            )
        return SentencePieceTokenizer(model)
    raise TokenizerError(f"model.tokenizer.library={library} is not supported: use sentencepiece or byte")
