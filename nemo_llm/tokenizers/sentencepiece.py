"""SentencePiece (Kudo & Richardson 2018): load a .model, or train one on the corpus."""

from __future__ import annotations

import io
import random
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import sentencepiece as spm

from nemo_llm.tokenizers.base import Tokenizer, TokenizerError

if TYPE_CHECKING:
    from nemo_llm.config.schema import TokenizerConfig

EOD_PIECE = "<eod>"


class SentencePieceTokenizer(Tokenizer):
    def __init__(self, model_path: str | Path, eod_token: str | None = None):
        self.model_path = str(model_path)
        try:
            self._sp = spm.SentencePieceProcessor(model_file=self.model_path)
        except RuntimeError as e:
            raise TokenizerError(f"model.tokenizer.model={self.model_path} is not a sentencepiece model "
                                 f"({str(e).strip()})") from None
        self._eod = self._find_eod(eod_token)

    @classmethod
    def from_config(cls, cfg: TokenizerConfig) -> SentencePieceTokenizer:
        if cfg.model is None or not Path(cfg.model).is_file():
            raise TokenizerError(
                f"model.tokenizer.model={cfg.model}: no sentencepiece model there; run the data_preparation "
                "stage (it trains one) or point model.tokenizer.model at a .model file"
            )
        return cls(cfg.model, cfg.eod_token)

    def _find_eod(self, eod_token: str | None) -> int:
        if eod_token is not None:
            eod = self._sp.piece_to_id(eod_token)
            # piece_to_id answers the <unk> id for a piece it does not know.
            if self._sp.id_to_piece(eod) != eod_token:
                raise TokenizerError(f"model.tokenizer.eod_token={eod_token!r} is not a piece of {self.model_path}: "
                                     "name one of its pieces, or null for <eod>")
            return eod
        eod = self._sp.piece_to_id(EOD_PIECE)
        # Models trained elsewhere may lack <eod>: their end-of-sentence token plays its part.
        eod = eod if eod != self._sp.unk_id() else self._sp.eos_id()
        if eod < 0:
            raise TokenizerError(f"{self.model_path}: sentencepiece model has neither {EOD_PIECE} nor an EOS token; "
                                 "name its end-of-document piece in model.tokenizer.eod_token")
        return eod

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    @property
    def eod_id(self) -> int:
        return self._eod

    def encode(self, text: str) -> list[int]:
        return self._sp.encode(text)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        # One thread: data preparation runs one worker process per core (data_preparation.workers),
        # and sentencepiece's own thread pool would oversubscribe them. Same ids as encode().
        return self._sp.encode(list(texts), num_threads=1)

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
    byte_fallback: bool = True,
    user_defined_symbols: Sequence[str] = (),
) -> SentencePieceTokenizer:
    """Train on the lines of `documents` and write the model file <model_path>.

    Byte fallback keeps any input encodable. <eod>, then user_defined_symbols, are user-defined
    pieces: each is always one id, so special tokens never split. Lines beyond
    input_sentence_size are sampled away reproducibly (seed).
    """
    lines = _sample_lines(documents, input_sentence_size, seed)
    if not lines:
        raise TokenizerError("cannot train a sentencepiece tokenizer: the corpus has no text")
    model = _train(
        lines,
        vocab_size=vocab_size,
        model_type=model_type,
        character_coverage=character_coverage,
        byte_fallback=byte_fallback,
        # <eod> first whatever the list says, so data preparation always finds its end-of-document id.
        user_defined_symbols=list(dict.fromkeys([EOD_PIECE, *user_defined_symbols])),
    )
    model_path = Path(model_path)
    model_path.parent.mkdir(parents=True, exist_ok=True)
    # Written whole after training, so a crash never leaves a half model looking complete.
    tmp = model_path.with_suffix(".model.tmp")
    tmp.write_bytes(model)
    tmp.replace(model_path)
    return SentencePieceTokenizer(model_path)


def _sample_lines(documents: Iterable[str], size: int, seed: int) -> list[str]:
    """At most `size` non-blank lines, drawn uniformly in one pass (reservoir sampling), so memory
    stays bounded whatever the corpus size; all lines, in order, when there are fewer."""
    rng = random.Random(seed)
    reservoir: list[str] = []
    seen = 0
    for document in documents:
        for line in document.splitlines():
            if not line.strip():
                continue
            if seen < size:
                reservoir.append(line)
            else:
                slot = rng.randrange(seen + 1)
                if slot < size:
                    reservoir[slot] = line
            seen += 1
    return reservoir


def _train(lines: list[str], vocab_size: int, **options) -> bytes:
    proto = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=proto, vocab_size=vocab_size,
                                       pad_id=-1, bos_id=-1, eos_id=-1, unk_id=0, num_threads=2, minloglevel=2,
                                       **options)
    except RuntimeError as e:
        # sentencepiece prefixes its reason with a source location; the reason is what the user can act on.
        reason = str(e).strip().rsplit("] ", 1)[-1]
        raise TokenizerError(f"cannot train a sentencepiece tokenizer with model.tokenizer.vocab_size={vocab_size}: "
                             f"{reason}") from None
    return proto.getvalue()
