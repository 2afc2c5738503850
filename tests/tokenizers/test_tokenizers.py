import json

import pytest
from omegaconf import OmegaConf
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from nemo_llm.config.schema import TokenizerConfig
from nemo_llm.data.corpus import embedded_documents
from nemo_llm.tokenizers import (ByteTokenizer, HuggingFaceTokenizer, SentencePieceTokenizer, TokenizerError,
                                 build_tokenizer, train_sentencepiece)

EOT = "<|endoftext|>"
HOSTILE = "naïve café ☃ — 日本語 done,  twice\n\tindented 🙂 end"


def sp_config(path):
    return {"library": "sentencepiece", "model": str(path)}


def test_byte_tokenizer_roundtrip():
    tok = ByteTokenizer()
    text = "naïve café ☃ — done"
    assert tok.decode(tok.encode(text)) == text
    assert tok.vocab_size == 257 and tok.eod_id == 256
    assert tok.decode([104, 105, 256]) == "hi"
    assert tok.encode_batch([text, ""]) == [tok.encode(text), []]


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
    again = build_tokenizer(sp_config(tmp_path / "sp" / "tok.model"))
    assert isinstance(again, SentencePieceTokenizer) and again.encode(text) == ids
    assert not list((tmp_path / "sp").glob("*.tmp"))
    texts = [*docs[:20], "", HOSTILE]
    assert tok.encode_batch(texts) == [tok.encode(t) for t in texts]


def test_sentencepiece_user_defined_symbols_are_single_pieces(tmp_path):
    docs = list(embedded_documents())[:100]
    symbols = ["<|user|>", "<|assistant|>", "<eod>"]  # <eod> again is tolerated, not duplicated
    tok = train_sentencepiece(docs, tmp_path / "tok.model", vocab_size=600, user_defined_symbols=symbols)
    sp = tok._sp
    assert [sp.id_to_piece(tok.eod_id + k) for k in range(3)] == ["<eod>", "<|user|>", "<|assistant|>"]
    ids = tok.encode("<|user|>hello there<|assistant|>")
    assert sp.piece_to_id("<|user|>") in ids and sp.piece_to_id("<|assistant|>") in ids
    assert tok.decode(ids) == "<|user|>hello there<|assistant|>"
    chosen = build_tokenizer({**sp_config(tmp_path / "tok.model"), "eod_token": "<|assistant|>"})
    assert chosen.eod_id == sp.piece_to_id("<|assistant|>")


def test_sentencepiece_without_byte_fallback_has_no_byte_pieces(tmp_path):
    docs = list(embedded_documents())[:100]
    tok = train_sentencepiece(docs, tmp_path / "tok.model", vocab_size=600, byte_fallback=False)
    assert not any(tok._sp.is_byte(i) for i in range(tok.vocab_size))
    assert tok._sp.unk_id() in tok.encode("☃")


def test_missing_model_names_the_fix(tmp_path):
    with pytest.raises(TokenizerError, match="run the data_preparation stage"):
        build_tokenizer(sp_config(tmp_path / "none.model"))


def test_corrupt_sentencepiece_model_and_unknown_eod_piece(tmp_path):
    bad = tmp_path / "bad.model"
    bad.write_text("not a model")
    with pytest.raises(TokenizerError, match=r"model.tokenizer.model=.*bad.model is not a sentencepiece model"):
        build_tokenizer(sp_config(bad))
    train_sentencepiece(list(embedded_documents())[:50], tmp_path / "tok.model", vocab_size=400)
    with pytest.raises(TokenizerError, match=r"model.tokenizer.eod_token='</s>' is not a piece"):
        build_tokenizer({**sp_config(tmp_path / "tok.model"), "eod_token": "</s>"})


def test_empty_corpus_cannot_train(tmp_path):
    with pytest.raises(TokenizerError, match="the corpus has no text"):
        train_sentencepiece(["", "  \n"], tmp_path / "t.model", vocab_size=100)


def test_too_small_vocabulary_cannot_train(tmp_path):
    with pytest.raises(TokenizerError, match=r"model.tokenizer.vocab_size=50: Vocabulary size is smaller") as info:
        train_sentencepiece(list(embedded_documents())[:50], tmp_path / "t.model", vocab_size=50)
    assert "\n" not in str(info.value) and not (tmp_path / "t.model").exists()


def test_build_tokenizer_takes_dictconfig_dataclass_and_dict():
    assert isinstance(build_tokenizer(OmegaConf.structured(TokenizerConfig(library="byte"))), ByteTokenizer)
    assert isinstance(build_tokenizer(TokenizerConfig(library="byte")), ByteTokenizer)
    assert isinstance(build_tokenizer({"library": "byte"}), ByteTokenizer)
    with pytest.raises(TokenizerError, match="model.tokenizer.libary is not a tokenizer key"):
        build_tokenizer({"libary": "byte"})
    with pytest.raises(TokenizerError, match="model.tokenizer.library=tiktoken is not supported"):
        build_tokenizer({"library": "tiktoken"})


@pytest.fixture(scope="module")
def gpt2_files(tmp_path_factory):
    """A small GPT-2 style byte-level BPE trained on the embedded corpus, saved both ways."""
    out = tmp_path_factory.mktemp("bpe")
    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=800, special_tokens=[EOT], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(list(embedded_documents())[:300], trainer)
    tok.save(str(out / "tokenizer.json"))
    vocab, merges = tok.model.save(str(out))
    return {"json": str(out / "tokenizer.json"), "vocab": vocab, "merges": merges, "eot": tok.token_to_id(EOT)}


def hf(**keys):
    return build_tokenizer({"library": "huggingface", **keys})


def test_huggingface_json_and_vocab_merges_agree(gpt2_files):
    from_json = hf(model=gpt2_files["json"])
    from_pair = hf(vocab_file=gpt2_files["vocab"], merge_file=gpt2_files["merges"], model="ignored/tokenizer.model")
    assert isinstance(from_json, HuggingFaceTokenizer) and isinstance(from_pair, HuggingFaceTokenizer)
    texts = [*list(embedded_documents())[300:320], HOSTILE, f"one{EOT}two", ""]
    assert [from_json.encode(t) for t in texts] == [from_pair.encode(t) for t in texts]
    assert from_json.vocab_size == from_pair.vocab_size == 800
    assert from_json.eod_id == from_pair.eod_id == gpt2_files["eot"]
    assert from_json.encode(f"one{EOT}two").count(from_json.eod_id) == 1  # the token in text is one id


def test_huggingface_roundtrip_batch_and_no_added_tokens(gpt2_files):
    tok = hf(model=gpt2_files["json"])
    ids = tok.encode(HOSTILE)
    assert tok.decode(ids) == HOSTILE
    assert tok.eod_id not in ids  # nothing appended or prepended
    assert tok.decode([*tok.encode("hi"), tok.eod_id, tok.vocab_size + 5, -1]) == "hi" + EOT
    texts = [*list(embedded_documents())[:50], HOSTILE, ""]
    assert tok.encode_batch(texts) == [tok.encode(t) for t in texts]


def test_huggingface_eod_token_must_be_in_the_vocabulary(gpt2_files):
    with pytest.raises(TokenizerError, match=r"model.tokenizer.eod_token='</s>' is not in the vocabulary"):
        hf(model=gpt2_files["json"], eod_token="</s>")
    with pytest.raises(TokenizerError, match=r"model.tokenizer.eod_token='</s>' is not in the vocabulary"):
        hf(vocab_file=gpt2_files["vocab"], merge_file=gpt2_files["merges"], eod_token="</s>")


@pytest.mark.parametrize("keys, message", [
    ({}, "model.tokenizer.library=huggingface needs model.tokenizer.model"),
    ({"vocab_file": "vocab.json"}, "model.tokenizer.vocab_file and model.tokenizer.merge_file go together"),
    ({"merge_file": "merges.txt", "model": "tokenizer.json"}, "go together"),
    ({"model": "missing/tokenizer.json"}, "model.tokenizer.model=missing/tokenizer.json: no tokenizer.json there"),
    ({"vocab_file": "missing/vocab.json", "merge_file": "missing/merges.txt"},
     "model.tokenizer.vocab_file=missing/vocab.json: no such file"),
])
def test_huggingface_config_errors(keys, message):
    with pytest.raises(TokenizerError, match=message):
        hf(**keys)


def test_huggingface_corrupt_files(tmp_path, gpt2_files):
    corrupt = tmp_path / "tokenizer.json"
    corrupt.write_text('{"version": "1.0", "model": ')
    with pytest.raises(TokenizerError, match=r"model.tokenizer.model=.*tokenizer.json is not a valid tokenizer.json \("):
        hf(model=str(corrupt))
    with pytest.raises(TokenizerError, match="not a valid tokenizer.json") as info:
        hf(model=gpt2_files["merges"])
    assert "\n" not in str(info.value)
    vocab = tmp_path / "vocab.json"
    vocab.write_text(json.dumps(["not", "a", "mapping"]))
    with pytest.raises(TokenizerError, match="are not a GPT-2 vocab.json and merges.txt"):
        hf(vocab_file=str(vocab), merge_file=gpt2_files["merges"])
