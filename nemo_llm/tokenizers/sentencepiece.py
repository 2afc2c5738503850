"""SentencePiece (Kudo & Richardson 2018): load a .model, or train one on the corpus."""

from __future__ import annotations

import io
import random
from collections.abc import Iterable
from pathlib import Path

import sentencepiece as spm

from nemo_llm.tokenizers.base import Tokenizer, TokenizerError

EOD_PIECE = "<eod>"


class SentencePieceTokenizer(Tokenizer):
    def __init__(self, model_path: str | Path):
        self.model_path = str(model_path)
        self._sp = spm.SentencePieceProcessor(model_file=self.model_path)
        eod = self._sp.piece_to_id(EOD_PIECE)
        # Models trained elsewhere may lack <eod>: their end-of-sentence token plays its part.
        self._eod = eod if eod != self._sp.unk_id() else self._sp.eos_id()
        if self._eod < 0:
            raise TokenizerError(f"{self.model_path}: sentencepiece model has neither {EOD_PIECE} nor an EOS token")

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    @property
    def eod_id(self) -> int:
        return self._eod

    def encode(self, text: str) -> list[int]:
        return self._sp.encode(text)

    def decode(self, ids: list[int]) -> str:
        return self._sp.decode([i for i in ids if 0 <= i < self.vocab_size])


def train_sentencepiece(
    documents: Iterable[str],
    model_path: str | Path,
    vocab_size: int,
    model_type: str = "bpe",
    input_sentence_size: int = 1_000_000,
    character_coverage: float = 0.9995,
    seed: int = 1234,
) -> SentencePieceTokenizer:
    """Train on the lines of `documents` and write the model file <model_path>.

    Byte fallback keeps any input encodable; <eod> is a user-defined piece so it can never be
    produced from text. Lines beyond input_sentence_size are sampled away reproducibly (seed).
    """
    lines = [line for doc in documents for line in doc.splitlines() if line.strip()]
    if not lines:
        raise TokenizerError("cannot train a sentencepiece tokenizer: the corpus has no text")
    if len(lines) > input_sentence_size:
        lines = random.Random(seed).sample(lines, input_sentence_size)
    model_path = Path(model_path)
    model_path.parent.mkdir(parents=True, exist_ok=True)
    proto = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=proto,
        vocab_size=vocab_size,
        model_type=model_type,
        character_coverage=character_coverage,
        byte_fallback=True,
        user_defined_symbols=[EOD_PIECE],
        pad_id=-1,
        bos_id=-1,
        eos_id=-1,
        unk_id=0,
        num_threads=2,
        minloglevel=2,
    )
    # Written whole after training, so a crash never leaves a half model looking complete.
    tmp = model_path.with_suffix(".model.tmp")
    tmp.write_bytes(proto.getvalue())
    tmp.replace(model_path)
    return SentencePieceTokenizer(model_path)
