import json

import numpy as np
import pytest

from nemo_llm.data.corpus import embedded_documents
from nemo_llm.data.indexed_dataset import IndexedDataset
from nemo_llm.data.preprocess import InputError, read_documents, resolve_inputs, write_indexed_dataset
from nemo_llm.tokenizers import ByteTokenizer


def test_embedded_corpus_is_real_text_and_stable():
    docs = list(embedded_documents())
    assert len(docs) > 300
    assert sum(map(len, docs)) > 300_000
    assert docs == list(embedded_documents())
    assert any("for" in d and "loop" in d for d in docs)


def test_txt_and_jsonl_inputs(tmp_path):
    (tmp_path / "a.txt").write_text("first document")
    (tmp_path / "b.jsonl").write_text(json.dumps({"text": "second"}) + "\n\n" + json.dumps({"text": "third"}) + "\n")
    files = resolve_inputs([str(tmp_path / "*.txt"), str(tmp_path / "b.jsonl")])
    assert [f.name for f in files] == ["a.txt", "b.jsonl"]
    assert list(read_documents(files)) == ["first document", "second", "third"]
    assert [f.name for f in resolve_inputs(str(tmp_path))] == ["a.txt", "b.jsonl"]


def test_jsonl_errors_name_file_and_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"body": "no text key"}\n')
    with pytest.raises(InputError, match=r"bad\.jsonl:2: no 'text' field \(set data_preparation.json_key\)"):
        list(read_documents([bad]))
    bad.write_text('{"text": "ok"}\n{"text": "unterminated\n')
    with pytest.raises(InputError, match=r"bad\.jsonl:2: not valid JSON"):
        list(read_documents([bad]))


def test_glob_without_match_is_an_error(tmp_path):
    with pytest.raises(InputError, match="matches no file"):
        resolve_inputs(str(tmp_path / "*.nothing"))


def test_write_indexed_dataset_appends_eod(tmp_path):
    tokenizer = ByteTokenizer()
    counts = write_indexed_dataset(iter(["ab", "", "é"]), tokenizer, tmp_path / "x")
    ds = IndexedDataset(tmp_path / "x")
    assert counts == {"documents": 3, "tokens": 3 + 1 + 3}
    assert ds[0].tolist() == [97, 98, 256] and ds[1].tolist() == [256] and ds[2].tolist() == [0xC3, 0xA9, 256]
    assert ds.dtype == np.uint16


def test_failed_preparation_leaves_no_complete_looking_files(tmp_path):
    def documents():
        yield "fine"
        raise InputError("broken input")

    with pytest.raises(InputError):
        write_indexed_dataset(documents(), ByteTokenizer(), tmp_path / "x")
    assert list(tmp_path.iterdir()) == []


def test_hostile_inputs(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    assert list(read_documents([empty])) == [""]
    bad_utf8 = tmp_path / "latin1.txt"
    bad_utf8.write_bytes("good line\n".encode() + "caf\xe9\n".encode("latin-1"))
    with pytest.warns(UserWarning, match=r"latin1\.txt:2: invalid UTF-8"):
        assert list(read_documents([bad_utf8])) == ["good line\ncaf\ufffd\n"]
    long_line = tmp_path / "long.jsonl"
    long_line.write_text(json.dumps({"text": "x" * 10_000_000}) + "\n")
    assert [len(d) for d in read_documents([long_line])] == [10_000_000]
    not_text = tmp_path / "number.jsonl"
    not_text.write_text('{"text": 12}\n')
    with pytest.raises(InputError, match=r"number\.jsonl:1: 'text' is int, not text"):
        list(read_documents([not_text]))
