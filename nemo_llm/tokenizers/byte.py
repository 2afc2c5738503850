"""UTF-8 bytes as tokens: needs no training and no file, so it is the fallback tokenizer."""

from __future__ import annotations

from nemo_llm.tokenizers.base import Tokenizer


class ByteTokenizer(Tokenizer):
    """Ids 0-255 are bytes; 256 is the end-of-document token."""

    @property
    def vocab_size(self) -> int:
        return 257

    @property
    def eod_id(self) -> int:
        return 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        # A sampled sequence may cut a multi-byte character; show it rather than fail.
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")
