"""Byte-level BPE as GPT-2 uses it, through Hugging Face `tokenizers`.

Loads a tokenizer.json (its own pipeline, as saved) or GPT-2's vocab.json + merges.txt, the
files Megatron and NeMo name vocab_file and merge_file. Nothing is trained here.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, pre_tokenizers
from tokenizers.models import BPE

from nemo_llm.tokenizers.base import Tokenizer, TokenizerError

if TYPE_CHECKING:
    from nemo_llm.config.schema import TokenizerConfig

DEFAULT_EOD_TOKEN = "<|endoftext|>"


def _reason(error: Exception) -> str:
    # The library's messages can span lines; the user gets one.
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


class HuggingFaceTokenizer(Tokenizer):
    def __init__(self, tokenizer: HFTokenizer, eod_token: str = DEFAULT_EOD_TOKEN, source: str = "the tokenizer"):
        eod = tokenizer.token_to_id(eod_token)
        if eod is None:
            raise TokenizerError(f"model.tokenizer.eod_token={eod_token!r} is not in the vocabulary of {source}: "
                                 "set it to the tokenizer's end-of-document token")
        # As a special token it is matched whole in text, whichever files it came from.
        tokenizer.add_special_tokens([eod_token])
        self._tok = tokenizer
        self._eod = eod
        # Ids need not be dense; the embedding must cover the largest.
        self._vocab_size = max(tokenizer.get_vocab(with_added_tokens=True).values()) + 1

    @classmethod
    def from_config(cls, cfg: TokenizerConfig) -> HuggingFaceTokenizer:
        eod_token = DEFAULT_EOD_TOKEN if cfg.eod_token is None else cfg.eod_token
        if cfg.vocab_file or cfg.merge_file:
            if not (cfg.vocab_file and cfg.merge_file):
                raise TokenizerError("model.tokenizer.vocab_file and model.tokenizer.merge_file go together: set both "
                                     "(GPT-2 vocab.json and merges.txt), or neither and point model.tokenizer.model "
                                     "at a tokenizer.json")
            return cls.from_vocab_and_merges(cfg.vocab_file, cfg.merge_file, eod_token)
        if not cfg.model:
            raise TokenizerError("model.tokenizer.library=huggingface needs model.tokenizer.model (a tokenizer.json) "
                                 "or model.tokenizer.vocab_file and merge_file (GPT-2 vocab.json and merges.txt)")
        return cls.from_file(cfg.model, eod_token)

    @classmethod
    def from_file(cls, path: str | Path, eod_token: str = DEFAULT_EOD_TOKEN) -> HuggingFaceTokenizer:
        """A tokenizer.json, with the pre-tokenizer and decoder it was saved with."""
        if not Path(path).is_file():
            raise TokenizerError(f"model.tokenizer.model={path}: no tokenizer.json there; point it at one, or set "
                                 "model.tokenizer.vocab_file and merge_file")
        try:
            tokenizer = HFTokenizer.from_file(str(path))
        except Exception as e:  # the library raises a bare Exception for any parse error
            raise TokenizerError(f"model.tokenizer.model={path} is not a valid tokenizer.json ({_reason(e)})") from None
        return cls(tokenizer, eod_token, str(path))

    @classmethod
    def from_vocab_and_merges(cls, vocab_file: str | Path, merge_file: str | Path,
                              eod_token: str = DEFAULT_EOD_TOKEN) -> HuggingFaceTokenizer:
        """GPT-2's files: byte-level pre-tokenizer without a prefix space, byte-level decoder."""
        for key, path in (("vocab_file", vocab_file), ("merge_file", merge_file)):
            if not Path(path).is_file():
                raise TokenizerError(f"model.tokenizer.{key}={path}: no such file")
        try:
            tokenizer = HFTokenizer(BPE.from_file(str(vocab_file), str(merge_file)))
        except Exception as e:  # the library raises a bare Exception for any parse error
            raise TokenizerError(f"model.tokenizer.vocab_file={vocab_file} and merge_file={merge_file} are not a GPT-2 "
                                 f"vocab.json and merges.txt ({_reason(e)})") from None
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        return cls(tokenizer, eod_token, str(vocab_file))

    @property
    def backend(self) -> HFTokenizer:
        """The `tokenizers` object, e.g. to save it as a tokenizer.json."""
        return self._tok

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    @property
    def eod_id(self) -> int:
        return self._eod

    def encode(self, text: str) -> list[int]:
        # No special tokens added: data preparation appends the end-of-document id itself.
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode([i for i in ids if 0 <= i < self._vocab_size], skip_special_tokens=False)
