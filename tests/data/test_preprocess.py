import gzip
import json

import numpy as np
import pytest

from nemo_llm.data.corpus import embedded_documents
from nemo_llm.data.indexed_dataset import IndexedDataset
from nemo_llm.data.preprocess import plan_shards, preprocess, shard_documents_of, write_indexed_dataset
from nemo_llm.data.sources import InputError, Position, build_sources, read_documents, resolve_inputs
from nemo_llm.tokenizers import ByteTokenizer

BYTE = {"library": "byte"}


def documents_of(*paths, json_key="text"):
    return list(read_documents(build_sources([str(p) for p in paths], json_key)))


def test_embedded_corpus_is_real_text_and_stable():
    docs = list(embedded_documents())
    assert len(docs) > 300
    assert sum(map(len, docs)) > 300_000
    assert docs == list(embedded_documents())
    assert any("for" in d and "loop" in d for d in docs)
    assert list(read_documents(build_sources())) == docs


def test_txt_and_jsonl_inputs(tmp_path):
    (tmp_path / "a.txt").write_text("first document")
    (tmp_path / "b.jsonl").write_text(json.dumps({"text": "second"}) + "\n\n" + json.dumps({"text": "third"}) + "\n")
    files = resolve_inputs([str(tmp_path / "*.txt"), str(tmp_path / "b.jsonl")])
    assert [f.name for f in files] == ["a.txt", "b.jsonl"]
    assert documents_of(tmp_path / "*.txt", tmp_path / "b.jsonl") == ["first document", "second", "third"]
    assert [f.name for f in resolve_inputs(str(tmp_path))] == ["a.txt", "b.jsonl"]


def test_compressed_jsonl_inputs(tmp_path):
    import zstandard

    lines = "".join(json.dumps({"body": f"doc {i} ☃"}) + "\n" for i in range(5)).encode()
    with gzip.open(tmp_path / "a.jsonl.gz", "wb") as f:
        f.write(lines)
    (tmp_path / "b.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(lines))
    expected = [f"doc {i} ☃" for i in range(5)]
    assert documents_of(tmp_path / "a.jsonl.gz", json_key="body") == expected
    assert documents_of(tmp_path / "b.jsonl.zst", json_key="body") == expected


def test_parquet_input_and_its_errors(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": [f"row {i}" for i in range(3000)], "id": list(range(3000))}),
                   tmp_path / "a.parquet", row_group_size=700)
    assert documents_of(tmp_path / "a.parquet") == [f"row {i}" for i in range(3000)]
    source = build_sources(str(tmp_path / "a.parquet"))[0]
    assert source.count() == 3000
    assert next(source.documents(Position(0, 2100))) == "row 2100"
    with pytest.raises(InputError, match=r"a\.parquet: no 'body' column \(columns: text, id\); set data_preparation"):
        documents_of(tmp_path / "a.parquet", json_key="body")
    with pytest.raises(InputError, match=r"a\.parquet: row 0: 'id' is int, not text"):
        documents_of(tmp_path / "a.parquet", json_key="id")
    pq.write_table(pa.table({"text": ["fine", None]}), tmp_path / "nulls.parquet")
    with pytest.raises(InputError, match=r"nulls\.parquet: row 1: 'text' is NoneType, not text"):
        documents_of(tmp_path / "nulls.parquet")
    (tmp_path / "fake.parquet").write_bytes(b"PAR1 but not really")
    with pytest.raises(InputError, match=r"fake\.parquet: not a readable parquet file"):
        documents_of(tmp_path / "fake.parquet")


def test_hf_datasets_from_a_local_folder_streaming_or_not_and_from_disk(tmp_path):
    import datasets

    folder = tmp_path / "hf"
    folder.mkdir()
    for shard in range(3):
        (folder / f"part{shard}.jsonl").write_text("".join(json.dumps({"content": f"{shard}-{i}"}) + "\n"
                                                           for i in range(4)))
    expected = [f"{s}-{i}" for s in range(3) for i in range(4)]
    cache = str(tmp_path / "cache")
    spec = {"path": str(folder), "split": "train", "cache_dir": cache}
    assert list(read_documents(build_sources(None, "content", spec))) == expected
    streamed = build_sources(None, "content", {**spec, "streaming": True})
    assert len(streamed) == 3  # one source per streaming shard
    assert sorted(read_documents(streamed)) == expected
    datasets.Dataset.from_dict({"content": expected}).save_to_disk(str(tmp_path / "saved"))
    assert list(read_documents(build_sources(None, "content", {"path": str(tmp_path / "saved")}))) == expected
    with pytest.raises(InputError, match=r"no 'text' column .*set data_preparation.json_key"):
        build_sources(None, "text", spec)
    with pytest.raises(InputError, match=r"hf_dataset.path=.*missing.*cannot load the dataset"):
        build_sources(None, "text", {"path": str(tmp_path / "missing"), "cache_dir": cache})


def test_jsonl_errors_name_file_and_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"body": "no text key"}\n')
    with pytest.raises(InputError, match=r"bad\.jsonl:2: no 'text' field \(set data_preparation.json_key\)"):
        documents_of(bad)
    bad.write_text('{"text": "ok"}\n{"text": "unterminated\n')
    with pytest.raises(InputError, match=r"bad\.jsonl:2: not valid JSON"):
        documents_of(bad)


def test_glob_without_match_is_an_error(tmp_path):
    with pytest.raises(InputError, match="matches no file"):
        resolve_inputs(str(tmp_path / "*.nothing"))


def test_write_indexed_dataset_appends_eod(tmp_path):
    counts = write_indexed_dataset(iter(["ab", "", "é"]), ByteTokenizer(), tmp_path / "x")
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
    assert documents_of(empty) == [""]
    bad_utf8 = tmp_path / "latin1.txt"
    bad_utf8.write_bytes("good line\n".encode() + "caf\xe9\n".encode("latin-1"))
    with pytest.warns(UserWarning, match=r"latin1\.txt:2: invalid UTF-8"):
        assert documents_of(bad_utf8) == ["good line\ncaf\ufffd\n"]
    long_line = tmp_path / "long.jsonl"
    long_line.write_text(json.dumps({"text": "x" * 10_000_000}) + "\n")
    assert [len(d) for d in documents_of(long_line)] == [10_000_000]
    not_text = tmp_path / "number.jsonl"
    not_text.write_text('{"text": 12}\n')
    with pytest.raises(InputError, match=r"number\.jsonl:1: 'text' is int, not text"):
        documents_of(not_text)


@pytest.fixture
def mixed_inputs(tmp_path):
    """Text files, a jsonl with blank lines and a parquet file: 2 + 23 + 17 documents."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "a.txt").write_text("alpha document")
    (inputs / "b.txt").write_text("")
    (inputs / "c.jsonl").write_text("".join(json.dumps({"text": f"line {i} é"}) + ("\n\n" if i % 5 == 0 else "\n")
                                            for i in range(23)))
    pq.write_table(pa.table({"text": [f"row {i}" for i in range(17)]}), inputs / "d.parquet", row_group_size=4)
    return build_sources(str(inputs))


def test_shards_of_n_documents_read_exactly_their_slice_of_the_stream(mixed_inputs):
    everything = list(read_documents(mixed_inputs))
    assert len(everything) == 42
    shards = plan_shards(mixed_inputs, 5)
    assert len(shards) == 9
    pieces = [list(shard_documents_of(mixed_inputs, s)) for s in shards]
    assert [d for piece in pieces for d in piece] == everything
    jsonl_start = shards[1].start  # documents 5.. lie in c.jsonl: a seek to byte offset and line
    assert jsonl_start.source == 2 and jsonl_start.byte_offset > 0 and jsonl_start.line > 4
    assert [len(s) for s in pieces][-1] == 2
    per_file = plan_shards(mixed_inputs, None)
    assert [s.count for s in per_file] == [None] * 4
    assert [d for s in per_file for d in shard_documents_of(mixed_inputs, s)] == everything


def test_line_numbers_stay_right_in_a_shard_that_starts_mid_file(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(json.dumps({"text": str(i)}) + "\n" for i in range(10)) + "{oops\n")
    sources = build_sources(str(bad))
    last = plan_shards(sources, 4)[-1]
    with pytest.raises(InputError, match=r"bad\.jsonl:11: not valid JSON"):
        list(read_documents(sources, last.start, last.count))


def test_result_does_not_depend_on_workers_or_sharding(mixed_inputs, tmp_path):
    reference = write_indexed_dataset(read_documents(mixed_inputs), ByteTokenizer(), tmp_path / "ref")
    for workers, shard_documents in ((1, None), (2, 5), (1, 1000)):
        out = tmp_path / f"out_{workers}_{shard_documents}"
        counts = preprocess(mixed_inputs, BYTE, out / "x", workers=workers, shard_documents=shard_documents,
                            log=lambda line: None)
        assert {k: counts[k] for k in ("documents", "tokens")} == reference
        for suffix in (".bin", ".idx"):
            assert (out / f"x{suffix}").read_bytes() == (tmp_path / f"ref{suffix}").read_bytes()
        assert not (out / "x_shards").exists()  # merged, then removed


def test_rerun_skips_complete_shards_and_output(mixed_inputs, tmp_path, monkeypatch):
    import nemo_llm.data.preprocess as pre

    reference = tmp_path / "ref"
    write_indexed_dataset(read_documents(mixed_inputs), ByteTokenizer(), reference)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt  # a run stopped after tokenizing, before the merge

    monkeypatch.setattr(pre, "merge_indexed_datasets", crash)
    with pytest.raises(KeyboardInterrupt):
        preprocess(mixed_inputs, BYTE, tmp_path / "out" / "x", shard_documents=5, log=lambda line: None)
    monkeypatch.undo()
    assert not (tmp_path / "out" / "x.idx").exists()
    shard_dir = next((tmp_path / "out" / "x_shards").iterdir())
    (shard_dir / "shard_00003.idx").unlink()  # as if killed while writing this one

    tokenized, lines = [], []
    real = pre._tokenize_shard
    monkeypatch.setattr(pre, "_tokenize_shard", lambda sources, shard, *a: tokenized.append(shard.index)
                        or real(sources, shard, *a))
    preprocess(mixed_inputs, BYTE, tmp_path / "out" / "x", shard_documents=5, log=lines.append)
    assert tokenized == [3]
    assert "resuming: 8 of 9 shards already complete" in lines[0]
    for suffix in (".bin", ".idx"):
        assert (tmp_path / "out" / f"x{suffix}").read_bytes() == (tmp_path / f"ref{suffix}").read_bytes()

    again = preprocess(mixed_inputs, BYTE, tmp_path / "out" / "x", shard_documents=5, log=lines.append)
    assert again["skipped"] and tokenized == [3]
    changed = preprocess(mixed_inputs, BYTE, tmp_path / "out" / "x", append_eod=False, shard_documents=5,
                         log=lines.append)
    assert not changed["skipped"] and changed["tokens"] == again["tokens"] - again["documents"]


def test_shards_of_a_changed_input_are_not_reused(tmp_path, monkeypatch):
    import nemo_llm.data.preprocess as pre

    (tmp_path / "a.txt").write_text("one")
    monkeypatch.setattr(pre, "merge_indexed_datasets", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        preprocess(build_sources(str(tmp_path / "a.txt")), BYTE, tmp_path / "x", log=lambda line: None)
    monkeypatch.undo()
    (tmp_path / "a.txt").write_text("two!")
    preprocess(build_sources(str(tmp_path / "a.txt")), BYTE, tmp_path / "x", log=lambda line: None)
    assert IndexedDataset(tmp_path / "x")[0].tolist() == list(b"two!") + [256]
