import pytest

from nemo_llm.data.corpus import embedded_documents
from nemo_llm.tokenizers import (ByteTokenizer, SentencePieceTokenizer, TokenizerError, build_tokenizer,
                                 train_sentencepiece)


def test_byte_tokenizer_roundtrip():
    tok = ByteTokenizer()
    text = "naïve café ☃ — done"
    assert tok.decode(tok.encode(text)) == text
    assert tok.vocab_size == 257 and tok.eod_id == 256
    assert tok.decode([104, 105, 256]) == "hi"


def test_sentencepiece_trains_on_the_embedded_corpus(tmp_path):
    docs = list(embedded_documents())[:100]
    tok = train_sentencepiece(docs, tmp_path / "sp" / "tok.model", vocab_size=600)
    assert tok.vocab_size == 600
    text = "The for statement is used to iterate over the elements of a sequence."
    ids = tok.encode(text)
    assert len(ids) < len(text) / 2  # it learned merges
    assert tok.decode(ids) == text
    assert tok.eod_id not in ids
    assert tok.decode(tok.encode("unseen ☃ glyph")) == "unseen ☃ glyph"  # byte fallback
    again = build_tokenizer("sentencepiece", str(tmp_path / "sp" / "tok.model"))
    assert isinstance(again, SentencePieceTokenizer) and again.encode(text) == ids
    assert not list((tmp_path / "sp").glob("*.tmp"))


def test_missing_model_names_the_fix(tmp_path):
    with pytest.raises(TokenizerError, match="run the data_preparation stage"):
        build_tokenizer("sentencepiece", str(tmp_path / "none.model"))


def test_empty_corpus_cannot_train(tmp_path):
    with pytest.raises(TokenizerError, match="the corpus has no text"):
        train_sentencepiece(["", "  \n"], tmp_path / "t.model", vocab_size=100)
